"""JsDeviceBridge: the device-bridge interface (bridges/__init__.py) over web/bridge/device.js, for
sdweb.backends.webgpu in Pyodide in the page's worker (sdweb.browser installs it).

The bind-group cache (groups.BindGroupCache) lives on this, the Python, side: from the second
denoising step on a dispatch crosses into JS as five integers, with no conversion of lists or bytes.
Nothing here waits: device.js queues weight uploads (they read IndexedDB) behind the calls before
them, and the page's async driver (sdweb.browser.drive) awaits `flush` once a component is built
and `read_ahead` before each readback, so `read_buffer` then answers at once. Only a readback nobody fetched ahead
returns a JS Promise, awaited with pyodide's `run_sync` where the browser has JavaScript Promise
Integration. Nothing here imports `js` or `pyodide` at module level, so the module also loads (and
is tested with a fake bridge) in CPython.
"""

from __future__ import annotations

import inspect

from ...errors import SdwebError
from .groups import BindGroupCache


def is_promise(x) -> bool:
    """A JS Promise arrives as a PyodideFuture or a JsProxy with `then`; plain bytes are not awaitable."""
    return inspect.isawaitable(x) or callable(getattr(x, "then", None))


def settle(r, what: str):
    """r, or its value when it is a JS Promise (awaited with JSPI's run_sync); `what` names what is
    awaited, for the error where this browser cannot wait in the middle of Python."""
    if is_promise(r):
        from pyodide.ffi import can_run_sync, run_sync  # only a Promise from JS gets here

        if not can_run_sync():
            raise SdwebError(f"Python would have to wait for {what} in the middle of a step, which this browser "
                             "cannot do (it lacks JavaScript Promise Integration)")
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
        self._js.upload_span(bid, key, int(offset), int(nbytes))

    def flush(self):
        """A JS Promise: every queued call (the weight uploads) done."""
        return self._js.flush()

    def read_ahead(self, bid: int, offset: int, nbytes: int):
        """A JS Promise: the queued work done and these bytes fetched, for the read_buffer that follows."""
        return self._js.read_ahead(bid, int(offset), int(nbytes))

    def read_buffer(self, bid: int, offset: int, nbytes: int) -> bytes:
        r = settle(self._js.read_buffer(bid, int(offset), int(nbytes)), "a readback from the GPU")
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
