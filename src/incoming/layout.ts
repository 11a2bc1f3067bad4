// MEM_SIZE: the source's blocks must be the destination's, name for name, length for length,
// page size for page size (blocks are allocated here first when the destination started
// without memory and knows how to allocate it).
import { ProtocolError, hex } from '../base/index.js';
import { RamBlock, type RamList } from '../memory/index.js';
import type { Mapping } from '../kernel/index.js';
import type { MemSizeBlock } from '../wire/index.js';

export function checkLayout(blocks: RamList<Mapping>, list: MemSizeBlock[], allocate?: (block: MemSizeBlock) => Mapping): void {
  if (blocks.size === 0 && allocate) {
    for (const b of list) blocks.add(new RamBlock<Mapping>({ idstr: b.idstr, usedLength: b.usedLength, pageSize: b.pageSize, host: allocate(b) }));
  }
  for (const b of list) {
    const local = blocks.byId(b.idstr);
    if (!local) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' does not exist here`);
    if (local.usedLength !== b.usedLength) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' used length ${hex(b.usedLength)} != local ${hex(local.usedLength)}`);
    if (local.pageSize !== b.pageSize) throw new ProtocolError(`MEM_SIZE: block '${b.idstr}' page size ${b.pageSize} != local ${local.pageSize}`);
  }
  if (list.length !== blocks.size) throw new ProtocolError(`MEM_SIZE: ${list.length} blocks, the destination has ${blocks.size}`);
}
