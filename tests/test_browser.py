"""Exported plotly HTML opened in a real headless Chromium: no console errors, WebGL really drew, nothing blank.
Skips when selenium, Chromium or chromedriver is missing (`make test` installs Chromium with apt where it can)."""
import numpy as np
import pytest

pytest.importorskip('selenium', reason='selenium is not installed (pip install -e ".[dev]")')
from browser import find_chromium, open_html

if find_chromium() is None:
    pytest.skip('Chromium/chromedriver not found: apt-get install chromium chromium-driver, or set '
                'SNIPNB_CHROMIUM and SNIPNB_CHROMEDRIVER', allow_module_level=True)
pytestmark = pytest.mark.browser

go = pytest.importorskip('plotly.graph_objects')
from plotly.subplots import make_subplots

from snipnb.synthetic import synthetic_recording
from snipnb.viz import skeleton_figure, timeline_figure, linked_figure, save_html, PART_COLORS

rgb = lambda h: tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))
LEFT_ARM_RGB, RIGHT_LEG_RGB, CURSOR_RGB = rgb(PART_COLORS['left_arm']), rgb(PART_COLORS['right_leg']), (0, 0, 0)
NO_WEBGL = ('WebGL is not supported', 'WebGL not supported')

@pytest.fixture(scope='module')
def recording(): return synthetic_recording(3, subject=1)

@pytest.fixture
def player_html(tmp_path, recording):
    "snipnb's standalone 3D skeleton player (joints and bones coloured by body part, frames, slider, play button)."
    fig = skeleton_figure(recording, frame=100, max_frames=60, width=1000, height=760)
    return save_html(fig, tmp_path/'player.html')

@pytest.fixture
def timeline_html(tmp_path, recording):
    "snipnb's boundary timeline: true and predicted lanes, the probability heatmap, boundary marks, the cursor."
    T = recording.num_frames
    probs = np.random.default_rng(0).dirichlet(np.ones(14), T).astype(np.float32)
    pred = [(l, s + 6, e - 2, 0.9) for l, s, e in recording.segments]
    fig = timeline_figure(recording.labels, pred, probs, recording.class_names, fps=recording.fps, frame=300,
                          width=1000, height=760)
    return save_html(fig, tmp_path/'timeline.html')

def webgl_problems(res):
    "Why a page's WebGL plot did not really draw ([] when it did)."
    problems = [f'page says {m!r}' for m in NO_WEBGL if m in res.text]
    if not res.canvases: problems.append('no <canvas> in the page')
    elif not max(res.canvases, key=lambda s: s.box[2] * s.box[3]).drawn(min_colours=50, min_fraction=0.05):
        problems.append(f'the largest canvas looks blank: {res.canvases}')
    return problems

def test_player_webgl_draws(player_html):
    res = open_html(player_html)
    assert res.ready, res.console
    assert res.errors == []
    assert webgl_problems(res) == []
    scene = max(res.canvases, key=lambda s: s.box[2] * s.box[3])
    assert scene.box[2] >= 500 and scene.box[3] >= 400, scene   # the scene fills most of the 1000x800 page
    # the skeleton itself was rasterised, in its body-part colours, inside the canvas
    assert res.colour_pixels(LEFT_ARM_RGB, scene.box) > 30
    assert res.colour_pixels(RIGHT_LEG_RGB, scene.box) > 30
    assert res.stats().drawn(min_colours=100, min_fraction=0.1)
    assert 'play' in res.text and 'synth_s001_r00003' in res.text

def test_player_animates_and_switches_camera(player_html):
    "Stepping the animation and switching the camera preset redraw the scene without JavaScript errors."
    first = open_html(player_html)
    gd = "const gd = document.querySelector('.js-plotly-plot'); "
    last = open_html(player_html, script=gd + "const f = gd._transitionData._frames; "
                     "Plotly.animate(gd, [f[f.length - 1].name], {mode: 'immediate', frame: {duration: 0, redraw: true}, "
                     "transition: {duration: 0}}).then(() => done());")
    top = open_html(player_html, script=gd + "Plotly.relayout(gd, {'scene.camera': {eye: {x: 0, y: -0.25, z: 2.3}}})"
                                             ".then(() => done());")
    for res in (last, top): assert res.ready and res.errors == [] and webgl_problems(res) == []
    box = max(first.canvases, key=lambda s: s.box[2] * s.box[3]).box
    crop = lambda r: r.image[box[1]:box[1] + box[3], box[0]:box[0] + box[2]].astype(int)
    for res in (last, top):                     # the skeleton moved on the screen
        assert (np.abs(crop(res) - crop(first)).sum(-1) > 30).sum() > 200

def test_linked_page_plays(tmp_path, recording):
    "Player and timeline in one page: drawn, and stepping the animation (skeleton + cursor) raises no error."
    probs = np.random.default_rng(1).dirichlet(np.ones(14), recording.num_frames).astype(np.float32)
    page = save_html(linked_figure(recording, [(l, s, e, .9) for l, s, e in recording.segments], probs, max_frames=40),
                     tmp_path/'linked.html')
    res = open_html(page, width=1300, height=700, selectors={'cursor': '.shapelayer path'},
                    script="const gd = document.querySelector('.js-plotly-plot'); const f = gd._transitionData._frames; "
                           "Plotly.animate(gd, [f[20].name], {mode: 'immediate', frame: {duration: 0, redraw: true}, "
                           "transition: {duration: 0}}).then(() => { window.cursorX = gd.layout.shapes[0].x0; done(); });")
    assert res.ready and res.errors == [] and webgl_problems(res) == []
    assert len(res.boxes['cursor']) == 1 and res.boxes['cursor'][0][0] > 700     # moved right, into the timeline

def test_timeline_draws(timeline_html, recording):
    res = open_html(timeline_html, selectors={'plots': '.bglayer .bg', 'bars': '.barlayer .point path',
                                              'heatmap': '.heatmaplayer image', 'cursor': '.shapelayer path'})
    assert res.ready, res.console
    assert res.errors == []
    assert res.canvases == []          # an SVG figure: nothing here depends on WebGL
    n = len(recording.segments)
    assert len(res.boxes['plots']) == 2 and len(res.boxes['bars']) == 2 * n and len(res.boxes['heatmap']) == 1
    plot_bg = res.stats(res.boxes['plots'][0]).background
    for box in res.boxes['bars']:      # each bar (true and predicted) is filled with its class colour
        bar = res.stats(box)
        assert bar.background not in (plot_bg, (255, 255, 255)), bar
    heat = res.stats(res.boxes['heatmap'][0])
    assert heat.drawn(min_colours=50, min_fraction=0.5), heat
    x, y, w, h = max(res.boxes['cursor'], key=lambda b: b[3])   # the dotted cursor, drawn over lanes and heatmap
    assert h > 500 and w <= 4
    assert res.colour_pixels(CURSOR_RGB, (x - 2, y, 5, h), tol=60) >= 0.3 * h
    assert res.stats().drawn(min_colours=100, min_fraction=0.1)

def test_detects_console_errors(tmp_path):
    page = tmp_path / 'error.html'
    page.write_text('<html><body><p>hello</p><script>console.log("snipnb-info"); '
                    'throw new Error("snipnb-boom");</script></body></html>')
    res = open_html(page, wait_s=0.2)
    assert res.ready and 'hello' in res.text
    assert any('snipnb-info' in m['message'] and m['level'] == 'INFO' for m in res.console), res.console
    assert len(res.errors) == 1 and 'snipnb-boom' in res.errors[0]['message'], res.console

def test_detects_blank_canvas(tmp_path):
    page = tmp_path / 'canvas.html'
    page.write_text(
        '<html><body style="margin:0"><canvas id="blank" width="400" height="300"></canvas>'
        '<canvas id="drawn" width="300" height="200"></canvas><script>'
        'document.getElementById("blank").getContext("webgl");'
        'const g = document.getElementById("drawn").getContext("2d"), grad = g.createLinearGradient(0, 0, 300, 0);'
        'grad.addColorStop(0, "red"); grad.addColorStop(1, "blue"); g.fillStyle = grad; g.fillRect(20, 20, 260, 160);'
        '</script></body></html>')
    res = open_html(page, wait_s=0.2)
    blank, drawn = res.canvases
    assert blank.box == (0, 0, 400, 300) and blank.n_colours == 1 and not blank.drawn()
    assert drawn.drawn(min_colours=50, min_fraction=0.5)
    assert webgl_problems(res)         # the check used on the player fails: its largest canvas is the blank one

def test_detects_missing_webgl(player_html):
    res = open_html(player_html, extra_args=['--disable-webgl'])
    assert any(m in res.text for m in NO_WEBGL), res.text
    assert webgl_problems(res)

def test_explorer_in_jupyterlab(tmp_path):
    "The Explorer in a real JupyterLab page: it renders, and moving the slider runs the kernel's callbacks."
    import json, os, socket, subprocess, sys, time
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from browser import CHROMIUM_FLAGS
    source = ("from snipnb.viz import Explorer\nex = Explorer({'synthetic': {'size': 'quick'}})\n"
              "ex.frame.observe(lambda ch: open('frame.txt', 'w').write(str(ch['new'])), 'value')\nex.widget")
    (tmp_path/'t.ipynb').write_text(json.dumps({
        'cells': [{'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None, 'source': source}],
        'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
        'nbformat': 4, 'nbformat_minor': 5}))
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    log = open(tmp_path/'lab.log', 'w')
    lab = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1',
                            '--ServerApp.token=', '--ServerApp.password=', '--LabApp.expose_app_in_browser=True',
                            f'--ServerApp.root_dir={tmp_path}', '--allow-root'],
                           stdout=log, stderr=subprocess.STDOUT, env={**os.environ, 'SNIPNB_CACHE_DIR': str(tmp_path/'cache')})
    driver = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try: socket.create_connection(('127.0.0.1', port), 1).close(); break
            except OSError:
                if time.monotonic() > deadline or lab.poll() is not None:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path/'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        chrome, chromedriver = find_chromium()
        opts = webdriver.ChromeOptions(); opts.binary_location = chrome
        for a in [*CHROMIUM_FLAGS, f'--user-data-dir={tmp_path/"profile"}', '--window-size=1600,1200']: opts.add_argument(a)
        opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
        driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
        driver.set_script_timeout(120)
        driver.get(f'http://127.0.0.1:{port}/lab/tree/t.ipynb')
        def wait(js, what, timeout=120):
            end = time.monotonic() + timeout
            while not driver.execute_script(js):
                if time.monotonic() > end: pytest.fail(f'JupyterLab: {what} within {timeout} s')
                time.sleep(0.5)
        wait('return !!(window.jupyterapp && document.querySelector(".jp-Notebook .jp-Cell"))', 'no notebook shown')
        time.sleep(5)                      # let the notebook's kernel start (execution requests queue behind it anyway)
        driver.execute_async_script("const done = arguments[0]; window.jupyterapp.commands.execute('notebook:run-all-cells')"
                                    ".then(() => done(), e => done(String(e)));")
        wait('return document.querySelectorAll(".jp-OutputArea .js-plotly-plot").length >= 2', 'the explorer did not render')
        time.sleep(2)
        handle = driver.find_element(By.CSS_SELECTOR, '.widget-slider .noUi-handle')
        handle.click()
        for _ in range(5): handle.send_keys(Keys.ARROW_RIGHT); time.sleep(0.3)
        wait('return Array.from(document.querySelectorAll(".jp-OutputArea .gtitle"))'
             '.some(e => e.textContent.includes("frame 5 "))', "the player's title did not follow the slider", 30)
        assert (tmp_path/'frame.txt').read_text() == '5'           # the kernel-side callback ran
        assert [m for m in driver.get_log('browser') if m['level'] == 'SEVERE'] == []
    finally:
        if driver is not None: driver.quit()
        lab.terminate()
        try: lab.wait(20)
        except subprocess.TimeoutExpired: lab.kill()
        log.close()
