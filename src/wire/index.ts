// Pure encoders and decoders of wire format v1 (stream, return path, handshake) and of the
// snapshot file. No I/O.
export * from './blocks.js';
export * from './constants.js';
export * from './handshake.js';
export * from './return-path.js';
export * from './stream-decoder.js';
export * from './stream-events.js';
export * from './stream-encoder.js';
export { ChunkReader, PayloadReader } from './reader.js';
export * as snapshotFormat from './snapshot-format.js';
export * from './bulk-packet.js';
