// How the decoders learn about blocks: whatever the caller resolves an idstr to (a RamBlock, a
// plain record) is handed back in events, so consumers need no second lookup.

/** What a decoder needs to know of a block to bounds-check records against it. */
export interface BlockShape {
  /** Offsets at or past this are rejected (QEMU: "could not have been valid on the source"). */
  readonly postcopyLength: number;
  /** Host page size: discards must be aligned to it. */
  readonly pageSize: number;
}

/** A function from idstr to block, or anything with `byId` (a RamList). */
export type BlockLookup<B extends BlockShape = BlockShape> =
  | ((idstr: string) => B | undefined)
  | { byId(idstr: string): B | undefined };

export function toLookupFunction<B extends BlockShape>(blocks: BlockLookup<B>): (idstr: string) => B | undefined {
  if (typeof blocks === 'function') return blocks;
  if (blocks && typeof blocks.byId === 'function') return (idstr) => blocks.byId(idstr);
  throw new TypeError('blocks must be a lookup function or an object with byId(idstr)');
}
