// Pure encoders and decoders of wire format v1 (stream, return path, handshake, bulk packets)
// and of the snapshot file. No I/O.
export { type BlockLookup, type BlockShape } from './blocks.js';
export {
  AUTH_BYTES,
  Capability,
  Command,
  commandName,
  DEFAULT_MAX_PACKAGED_BYTES,
  DISCARD_VERSION,
  FrameKind,
  MAGIC,
  MAX_BULK_CHANNELS,
  MAX_IDSTR_BYTES,
  NONCE_BYTES,
  RamFlag,
  ramFlagNames,
  RECV_BITMAP_ENDING,
  ResumeState,
  ReturnPathType,
  Role,
  roleName,
  VERSION,
} from './constants.js';
export { authEqual, createNonce, helloAuth, verifyHelloAuth, type AuthToken } from './handshake.js';
export {
  encodeChallenge,
  encodeHelloAck,
  encodePong,
  encodeRecvBitmap,
  encodeRefuse,
  encodeReqPages,
  encodeReqPagesId,
  encodeResumeAck,
  encodeShut,
  ReturnPathDecoder,
  ReturnPathEncoder,
  type ReturnPathDecoderOptions,
  type ReturnPathEvent,
} from './return-path.js';
export { StreamDecoder, type StreamDecoderOptions, type StreamDecoderState } from './stream-decoder.js';
export { type ByteRange, type CommandEvent, type HelloFields, type MemSizeBlock, type StreamEvent } from './stream-events.js';
export {
  encodeAdvise,
  encodeCommand,
  encodeComplete,
  encodeDiscard,
  encodeEof,
  encodeEos,
  encodeHeader,
  encodeHello,
  encodeListen,
  encodeMemSize,
  encodeMultifdFlush,
  encodeOpenReturnPath,
  encodePackaged,
  encodePackagedHeader,
  encodePing,
  encodeRamPage,
  encodeRamZero,
  encodeRecvBitmapCommand,
  encodeResume,
  encodeRun,
  maxDiscardPairs,
  StreamEncoder,
  type BlockRef,
} from './stream-encoder.js';
export {
  BULK_MAGIC,
  BulkFlag,
  BulkPacketDecoder,
  encodeBulkHeader,
  MAX_PACKET_BYTES,
  MAX_PACKET_PAGES,
  type BulkBlockInfo,
  type BulkPacket,
  type BulkPacketFields,
} from './bulk-packet.js';
export * as snapshotFormat from './snapshot-format.js';
