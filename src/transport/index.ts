export * from './channel.js';
export * from './chaos-proxy.js';
export * from './client.js';
export * from './endpoint.js';
export * from './server.js';
