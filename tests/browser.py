"""Test support: open an exported HTML figure in headless Chromium and measure what it drew.

`open_html` loads a file:// page, waits until every plotly div has been plotted, and returns the console
messages, a PNG screenshot, the page text and pixel statistics of each <canvas>. The statistics come from
the screenshot, not from `canvas.toDataURL`, which returns a blank image for a WebGL canvas created without
`preserveDrawingBuffer` (plotly's case). Selenium is imported lazily, so this module imports without it.
"""
import os, shutil, struct, tempfile, time, zlib
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

# WebGL in headless Chromium without a GPU runs on SwiftShader (software Vulkan behind ANGLE). Chromium
# still falls back to it on its own but logs a deprecation warning and says the fallback will go away;
# --enable-unsafe-swiftshader opts in explicitly, --use-angle=swiftshader picks it even where a GPU exists.
WEBGL_FLAGS = ['--enable-unsafe-swiftshader', '--use-angle=swiftshader']
# The rest: run as root in containers, and never touch the (closed) network on start-up.
CHROMIUM_FLAGS = ['--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--hide-scrollbars',
                  '--disable-quic', '--no-first-run', '--no-default-browser-check', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions',
                  '--disable-breakpad', '--disable-features=Translate,MediaRouter,OptimizationHints',
                  '--password-store=basic', '--mute-audio', *WEBGL_FLAGS]

def find_chromium():
    "(chromium, chromedriver) paths from SNIPNB_CHROMIUM / SNIPNB_CHROMEDRIVER, /usr/bin or PATH; None if either is missing."
    def find(env, names):
        if os.environ.get(env): return os.environ[env] if os.access(os.environ[env], os.X_OK) else None
        for name in names:
            path = f'/usr/bin/{name}' if os.access(f'/usr/bin/{name}', os.X_OK) else shutil.which(name)
            if path: return path
    browser = find('SNIPNB_CHROMIUM', ['chromium', 'chromium-browser', 'google-chrome'])
    driver = find('SNIPNB_CHROMEDRIVER', ['chromedriver'])
    return (browser, driver) if browser and driver else None

def decode_png(data: bytes) -> np.ndarray:
    "An 8-bit, non-interlaced PNG (what Chromium's screenshots are) as an (H, W, channels) uint8 array."
    if data[:8] != b'\x89PNG\r\n\x1a\n': raise ValueError('not a PNG')
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack('>I4s', data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b'IHDR': w, h, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', chunk)
        elif kind == b'IDAT': idat.append(chunk)
        elif kind == b'IEND': break
    ch = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or ch is None or interlace:
        raise ValueError(f'unsupported PNG: bit depth {depth}, colour type {ctype}, interlace {interlace}')
    stride = w * ch
    raw = np.frombuffer(zlib.decompress(b''.join(idat)), np.uint8).reshape(h, stride + 1)
    out = np.zeros((h + 1, stride), np.uint8)  # row 0 is the all-zero row "above" the image
    for y in range(h):
        f, line, up = raw[y, 0], raw[y, 1:], out[y]
        if f == 0: out[y + 1] = line
        elif f == 1: out[y + 1] = np.cumsum(line.reshape(w, ch), axis=0, dtype=np.uint8).reshape(-1)  # wraps mod 256
        elif f == 2: out[y + 1] = line + up
        elif f in (3, 4):  # Average, Paeth: each byte depends on the decoded byte to its left
            cur, ln, upl = bytearray(stride), line.tolist(), up.tolist()
            for i in range(stride):
                a, b = (cur[i - ch] if i >= ch else 0), upl[i]
                if f == 3: pred = (a + b) >> 1
                else:
                    c = upl[i - ch] if i >= ch else 0
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (ln[i] + pred) & 255
            out[y + 1] = np.frombuffer(bytes(cur), np.uint8)
        else: raise ValueError(f'bad PNG filter type {f}')
    return out[1:].reshape(h, w, ch)

@dataclass(frozen=True)
class PixelStats:
    "Colours in one screenshot region; the background is the region's most common colour."
    box: tuple          # (x, y, width, height) in screenshot pixels, clipped to the screenshot
    n_colours: int
    drawn_fraction: float  # fraction of pixels that differ from the background
    background: tuple

    def drawn(self, min_colours=2, min_fraction=0.0) -> bool:
        return self.n_colours >= min_colours and self.drawn_fraction > min_fraction

def pixel_stats(img: np.ndarray, box=None) -> PixelStats:
    H, W = img.shape[:2]
    x, y, w, h = box or (0, 0, W, H)
    x0, y0, x1, y1 = max(0, int(x)), max(0, int(y)), min(W, int(x + w)), min(H, int(y + h))
    crop = img[y0:y1, x0:x1, :3].reshape(-1, 3)
    if not len(crop): return PixelStats((x0, y0, 0, 0), 0, 0.0, ())
    keys = (crop[:, 0].astype(np.uint32) << 16) | (crop[:, 1].astype(np.uint32) << 8) | crop[:, 2]
    colours, counts = np.unique(keys, return_counts=True)
    bg = int(colours[counts.argmax()])
    return PixelStats((x0, y0, x1 - x0, y1 - y0), len(colours), float(1 - counts.max() / len(keys)),
                      (bg >> 16, (bg >> 8) & 255, bg & 255))

@dataclass
class PageResult:
    url: str
    ready: bool                 # every plotly div was plotted before the timeout
    console: list               # driver.get_log('browser') entries: dicts with level, message, source, timestamp
    screenshot: bytes           # PNG of the viewport
    text: str                   # document.body.innerText
    canvases: list              # PixelStats of each visible <canvas>, in document order
    boxes: dict = field(default_factory=dict)  # name -> [(x, y, w, h)] for the `selectors` asked for
    image: np.ndarray = None    # the decoded screenshot, (H, W, channels)

    @property
    def errors(self): return [m for m in self.console if m['level'] == 'SEVERE']
    def stats(self, box=None) -> PixelStats:
        "Pixel statistics of a box of the screenshot (the whole of it when None)."
        return pixel_stats(self.image, box)
    def colour_pixels(self, rgb, box=None, tol=0) -> int:
        "How many pixels of a box of the screenshot (all of it when None) are within `tol` of colour `rgb`."
        x0, y0, w, h = self.stats(box).box
        crop = self.image[y0:y0 + h, x0:x0 + w, :3].astype(int)
        return int((np.abs(crop - np.asarray(rgb)).max(-1) <= tol).sum())

_STATE_JS = """
if (document.readyState !== 'complete') return 'loading';
const gds = document.querySelectorAll('.plotly-graph-div');
if (gds.length && !window.Plotly) return 'no Plotly';
for (const gd of gds) if (!gd._fullLayout || gd._transitioningWithDuration) return 'plotting';
return 'ready';"""
_BOXES_JS = """
const r = {};
for (const [name, sel] of Object.entries(arguments[0])) r[name] = [...document.querySelectorAll(sel)].map(e => {
  const b = e.getBoundingClientRect(); return [b.x, b.y, b.width, b.height]; });
r.__scale = window.devicePixelRatio; return r;"""

def open_html(path, width=1000, height=800, wait_s=1.0, timeout_s=60, selectors=None, extra_args=(), script=None) -> PageResult:
    """Open `path` in headless Chromium, wait until plotly has drawn (then `wait_s` more), and measure it.
    `selectors` maps names to CSS selectors whose bounding boxes go into `boxes`; `extra_args` are more Chromium flags;
    `script` is JavaScript run once the plot is ready, before measuring: it must call `done()` when finished."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    found = find_chromium()
    if found is None: raise FileNotFoundError('chromium or chromedriver not found (set SNIPNB_CHROMIUM/SNIPNB_CHROMEDRIVER)')
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix='snipnb-chromium-', ignore_cleanup_errors=True) as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = found[0]
        for a in [*CHROMIUM_FLAGS, f'--user-data-dir={profile}', f'--window-size={width},{height}', *extra_args]:
            opts.add_argument(a)
        opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
        driver = webdriver.Chrome(options=opts, service=Service(found[1]))
        try:
            driver.set_page_load_timeout(timeout_s)
            driver.set_script_timeout(timeout_s)
            # an exact viewport at device pixel ratio 1, so that CSS pixels are screenshot pixels
            driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                                   dict(width=width, height=height, deviceScaleFactor=1, mobile=False))
            driver.get(url)
            deadline, ready = time.monotonic() + timeout_s, False
            while time.monotonic() < deadline:
                if driver.execute_script(_STATE_JS) == 'ready': ready = True; break
                time.sleep(0.1)
            if ready and script: driver.execute_async_script('const done = arguments[0]; ' + script)
            if ready:  # two animation frames: WebGL scenes draw on requestAnimationFrame
                driver.execute_async_script('const done = arguments[0]; '
                                            'requestAnimationFrame(() => requestAnimationFrame(() => done()));')
            time.sleep(wait_s)
            boxes = driver.execute_script(_BOXES_JS, {'__canvas': 'canvas', **(selectors or {})})
            text = driver.execute_script('return document.body ? document.body.innerText : "";')
            png = driver.get_screenshot_as_png()
            console = driver.get_log('browser')
        finally:
            driver.quit()
    image = decode_png(png)
    scale = image.shape[1] / width  # 1.0 with the override above; kept in case a platform ignores it
    boxes = {k: [tuple(v * scale for v in b) for b in bs] for k, bs in boxes.items() if k != '__scale'}
    canvases = [pixel_stats(image, b) for b in boxes.pop('__canvas') if b[2] > 0 and b[3] > 0]
    return PageResult(url, ready, console, png, text, canvases, boxes, image)
