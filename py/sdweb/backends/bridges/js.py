"""JsDeviceBridge: the device-bridge interface (bridges/__init__.py) over web/bridge/device.js, for
sdweb.backends.webgpu in Pyodide in the page's worker (sdweb.browser installs it).

The bind-group cache (groups.BindGroupCache) lives on this, the Python, side: from the second
denoising step on a dispatch crosses into JS as five integers, with no conversion of lists or bytes.
Calls that wait for the GPU or for IndexedDB return a JS Promise, awaited with pyodide's `run_sync`
(JavaScript Promise Integration). Nothing here imports `js` or `pyodide` at module level, so the
module also loads (and is tested with a fake bridge) in CPython.
"""

from __future__ import annotations

import inspect

from .groups import BindGroupCache


def is_promise(x) -> bool:
    """A JS Promise arrives as a PyodideFuture or a JsProxy with `then`; plain bytes are not awaitable."""
    return inspect.isawaitable(x) or callable(getattr(x, "then", None))


def settle(r):
    """r, or its value when it is a JS Promise (awaited with JSPI's run_sync)."""
    if is_promise(r):
        from pyodide.ffi import run_sync  # only a Promise from JS gets here

        r = run_sync(r)
    return r


class JsDeviceBridge:
    def __init__(self, js):
        self._js = js
        self._groups = BindGroupCache()

    def limits(self) -> dict:
        lim = self._js.limits()
        return lim.to_py() if hasattr(lim, "to_py") else dict(lim)

    def create_buffer(self, nbytes: int) -> int:
        return int(self._js.create_buffer(int(nbytes)))

    def write_buffer(self, bid: int, offset: int, data) -> None:
        self._js.write_buffer(bid, int(offset), data if isinstance(data, bytes) else bytes(data))

    def upload_span(self, bid: int, source, offset: int, nbytes: int) -> None:
        """The JS bridge copies the bytes from the store itself when it knows the source's `key`;
        a source without one (a test's, in CPython) is read here and written as write_buffer."""
        key = getattr(source, "key", None)
        if key is None:
            data = source.read(offset, nbytes)
            self.write_buffer(bid, 0, data.to_bytes() if hasattr(data, "to_bytes") else bytes(data))
            return
        settle(self._js.upload_span(bid, key, int(offset), int(nbytes)))

    def read_buffer(self, bid: int, offset: int, nbytes: int) -> bytes:
        r = settle(self._js.read_buffer(bid, int(offset), int(nbytes)))
        return r.to_bytes() if hasattr(r, "to_bytes") else bytes(r)

    def destroy_buffer(self, bid: int) -> None:
        ids = self._groups.drop_buffer(bid)
        if ids:
            self._js.drop_groups(_js_list(ids))
        self._js.destroy_buffer(bid)

    def pipeline(self, key: str, wgsl: str, entry: str) -> int:
        return int(self._js.pipeline(key, wgsl, entry))

    def dispatch(self, pipeline_id: int, buffers, uniform: bytes, groups) -> None:
        key = self._groups.key(pipeline_id, buffers, uniform)
        gid = self._groups.get(key)
        if gid is None:
            if self._groups.full:
                self.submit()  # recorded dispatches use the groups about to go
                self._js.drop_groups(_js_list(self._groups.clear()))
            flat = [int(v) for buf in buffers for v in buf]
            gid = self._groups.add(key, int(self._js.bind_group(pipeline_id, _js_list(flat), key[2])))
        x, y, z = groups
        self._js.dispatch(pipeline_id, gid, int(x), int(y), int(z))

    def submit(self) -> None:
        self._js.submit()


def _js_list(values: list):
    try:
        from pyodide.ffi import to_js
    except ImportError:  # CPython (tests): a list is what a fake bridge takes
        return values
    return to_js(values)
