// Channels of a migration over TCP or Unix sockets: the destination's listener (challenge,
// HELLO, admission), the source's connect, and the stall watch.
export { Channel, StallWatch, channelClosedMessage, type ChannelRole } from './channel.js';
export { connectChannel, type ConnectOptions, type ConnectedChannel } from './client.js';
export { formatEndpoint, listenOn, parseEndpoint, type Endpoint } from './endpoint.js';
export { IncomingListener, type AcceptedChannel, type Admission, type ListenOptions } from './server.js';
