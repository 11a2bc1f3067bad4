// Channels of a migration over TCP or Unix sockets, plain or TLS 1.3: the destination's
// listener (challenge, HELLO, admission), the source's connect, and the stall watch.
export { Channel, StallWatch, channelClosedMessage, type ChannelRole } from './channel.js';
export { connectChannel, type ConnectOptions, type ConnectedChannel } from './client.js';
export { formatEndpoint, listenOn, parseEndpoint, type Endpoint } from './endpoint.js';
export { IncomingListener, type AcceptedChannel, type Admission, type ListenOptions } from './server.js';
export { issueCertificate, throwawayCredentials, type CertificateRequest, type IssuedCertificate } from './certificate.js';
export { answerPlaintext, connectSocket, createServerFor, explainTlsError, isPlaintextPeer, loadTls, peerRefusal, type TlsFiles, type TlsSettings } from './tls.js';
