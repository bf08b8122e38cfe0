"""The bind-group bookkeeping every bridge shares (wgpu.py, js.py, and counting.py, which counts what
the others would create).

A bind group is keyed by what it binds: (pipeline id, buffers [(id, offset, nbytes), ..], uniform
bytes). The backend's pool hands out the same buffers on every denoising step and the uniforms of a
step repeat, so from the second step on every dispatch finds its group here. A destroyed buffer takes
its groups with it; past MAX_GROUPS the bridge empties the cache (after submitting the work that
uses the groups) and starts over.

    cache = BindGroupCache()
    key = cache.key(pipeline_id, buffers, uniform)
    group = cache.get(key)                      None on a miss; then, when cache.full, the bridge
                                                submits and releases cache.clear(), and stores
    cache.add(key, group)                       what it made (a wgpu bind group, a JS id, True)
    cache.drop_buffer(buffer_id) -> [groups]    the groups that bound a buffer being destroyed

WgpuBridge gives each group's uniform its own slot in an append-only arena of uniform buffers;
UniformArena decides the slots, so the counting bridge can report the arena WgpuBridge would hold.
"""

from __future__ import annotations

MAX_GROUPS = 1 << 15  # cached bind groups at most


class BindGroupCache:
    def __init__(self, max_groups: int = MAX_GROUPS):
        self.max_groups = max_groups
        self._groups: dict[tuple, object] = {}
        self._of: dict[int, list[tuple]] = {}  # buffer id -> keys of the groups that bind it

    @staticmethod
    def key(pipeline_id: int, buffers, uniform) -> tuple:
        """buffers: (id, offset, nbytes) tuples, as the backend passes them."""
        return pipeline_id, tuple(buffers), bytes(uniform)

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def full(self) -> bool:
        return len(self._groups) >= self.max_groups

    def get(self, key: tuple):
        return self._groups.get(key)

    def add(self, key: tuple, group):
        self._groups[key] = group
        for bid in {buf[0] for buf in key[1]}:
            self._of.setdefault(bid, []).append(key)
        return group

    def drop_buffer(self, bid: int) -> list:
        """Forget the groups that bind buffer `bid`; -> those groups, for the bridge to release."""
        return [self._groups.pop(k) for k in self._of.pop(bid, ()) if k in self._groups]

    def clear(self) -> list:
        """Forget every group; -> them, for the bridge to release."""
        out = list(self._groups.values())
        self._groups.clear()
        self._of.clear()
        return out


class UniformArena:
    """Slots for bind groups' uniforms in blocks of BLOCK_BYTES, each slot aligned to `align`
    (minUniformBufferOffsetAlignment); a block is filled before the next one is opened."""

    BLOCK_BYTES = 1 << 18  # 256 KB: 1,024 dispatches' uniforms at 256-byte alignment

    def __init__(self, align: int):
        self.align = max(16, align)
        self.used: list[int] = []  # bytes taken in each block
        self._block = 0  # the block being filled

    def slot(self, nbytes: int) -> tuple[int, int]:
        """(block, offset) of a fresh slot of nbytes; block == len(used) - 1 may be a new block."""
        while True:
            if self._block == len(self.used):
                self.used.append(0)
            offset = -self.used[self._block] % self.align + self.used[self._block]
            if offset + nbytes <= self.BLOCK_BYTES:
                self.used[self._block] = offset + nbytes
                return self._block, offset
            self._block += 1

    def reset(self):
        """Every slot free again (the blocks stay)."""
        self.used = [0] * len(self.used)
        self._block = 0

    @property
    def nbytes(self) -> int:
        return self.BLOCK_BYTES * len(self.used)
