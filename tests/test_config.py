"""snipnb.config: precedence, strict parsing, path resolution from anywhere."""
import os
from pathlib import Path
import pytest
import snipnb
from snipnb.config import get_settings, get_setting, read_settings, find_settings, SettingsError, shared_data_dir, KEYS

@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith('SNIPNB_'): monkeypatch.delenv(k)
    return monkeypatch

def test_version():
    assert isinstance(snipnb.__version__, str) and snipnb.__version__.count('.') >= 2

def test_precedence_argument_env_file_default(tmp_path, clean_env):
    f = tmp_path/'settings.ini'
    f.write_text('[snipnb]\ncache_dir = file_cache\ndevice = cpu\n')
    clean_env.setenv('SNIPNB_SETTINGS', str(f))
    s = get_settings()
    assert s.cache_dir == str(tmp_path/'file_cache') and s.source['cache_dir'] == str(f.resolve())
    assert s.output_dir == str(tmp_path/'outputs') and s.source['output_dir'] == 'default'   # default, relative to the file
    clean_env.setenv('SNIPNB_CACHE_DIR', '/from/env')
    assert get_settings().cache_dir == '/from/env'
    assert get_settings().source['cache_dir'] == 'environment'
    assert get_settings(cache_dir='/from/arg').cache_dir == '/from/arg'
    assert get_setting('cache_dir', '/from/arg') == '/from/arg'
    assert get_setting('device') == 'cpu'
    clean_env.setenv('SNIPNB_DEVICE', 'cuda:1')
    assert get_setting('device') == 'cuda:1'
    assert get_setting('device', 'mps') == 'mps'

def test_dataset_roots_follow_data_dir(tmp_path, clean_env):
    f = tmp_path/'settings.ini'
    f.write_text('[snipnb]\ndata_dir = big/disk\nbabel_root = /elsewhere/babel\n')
    s = get_settings(f)
    assert s.dataset_root('ntu60') == tmp_path/'big'/'disk'/'ntu60'
    assert s.dataset_root('babel') == Path('/elsewhere/babel')
    clean_env.setenv('SNIPNB_DATA_DIR', str(tmp_path/'env_data'))
    assert get_settings(f).dataset_root('pkummd') == tmp_path/'env_data'/'pkummd'
    with pytest.raises(KeyError, match='unknown dataset'): s.dataset_root('imagenet')

def test_found_by_walking_up_from_any_folder(tmp_path, clean_env):
    (tmp_path/'settings.ini').write_text('[snipnb]\noutput_dir = out\n')
    deep = tmp_path/'nbs'/'sub'; deep.mkdir(parents=True)
    clean_env.chdir(deep)
    assert find_settings() == (tmp_path/'settings.ini').resolve()
    assert get_setting('output_dir') == str(tmp_path/'out')   # relative to the file, not to the working folder

def test_builtin_defaults_without_settings(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    clean_env.setenv('HOME', str(tmp_path/'home'))
    s = get_settings()
    assert s.file is None
    assert s.cache_dir == str(tmp_path/'home'/'.snipnb'/'cache') and s.device == 'auto'
    assert all(src == 'default' for src in s.source.values())

def test_repository_settings_ini(repo, clean_env):
    clean_env.chdir(repo/'nbs')    # nbdev-test runs notebooks here
    s = get_settings()
    assert s.file == (repo/'settings.ini').resolve()
    assert s.dataset_root('babel') == repo/'data'/'babel' and s.cache_dir == str(repo/'data'/'cache')
    assert set(read_settings(repo/'settings.ini')) <= set(KEYS)

@pytest.mark.parametrize('text,needle', [
    ('[snipnb]\ncahce_dir = x\n', "unknown key 'cahce_dir'"),
    ('[snipnb]\ndevice = tpu\n', "key 'device'"),
    ('[snipnb]\ncache_dir =\n', "key 'cache_dir' is empty"),
    ('[snipnb]\nno equals sign on this line\n', 'malformed'),
    ('[other]\ndevice = cpu\n', 'no [snipnb] section'),
])
def test_malformed_settings_name_file_and_key(tmp_path, clean_env, text, needle):
    f = tmp_path/'settings.ini'; f.write_text(text)
    with pytest.raises(SettingsError) as e: get_settings(f)
    assert str(f) in str(e.value) and needle in str(e.value)

def test_bad_environment_and_argument(tmp_path, clean_env):
    clean_env.setenv('SNIPNB_DEVICE', 'gpu0')
    with pytest.raises(SettingsError, match='SNIPNB_DEVICE'): get_settings()
    clean_env.delenv('SNIPNB_DEVICE')
    with pytest.raises(SettingsError, match="unknown setting"): get_settings(cache='x')
    clean_env.setenv('SNIPNB_SETTINGS', str(tmp_path/'missing.ini'))
    with pytest.raises(SettingsError, match='missing.ini'): get_settings()

def test_shared_data_dir(tmp_path, clean_env):
    (tmp_path/'shared'/'data').mkdir(parents=True)
    assert shared_data_dir(tmp_path/'shared') == tmp_path/'shared'/'data'
    clean_env.setenv('SNIPNB_SHARED_DATA', str(tmp_path/'shared'/'data'))
    assert shared_data_dir() == tmp_path/'shared'/'data'
    clean_env.setenv('SNIPNB_SHARED_DATA', str(tmp_path/'nope'))
    assert shared_data_dir() is None

def test_binary_settings_file_named(tmp_path, clean_env):
    "A binary settings.ini (a wrong file under the right name) is refused naming it, not with a bare UnicodeDecodeError."
    f = tmp_path/'settings.ini'
    f.write_bytes(b'[snipnb]\ndevice = cpu\n\xff\xfe\x00\x89PNG')
    with pytest.raises(SettingsError, match=r'settings\.ini: not a text file \(byte 22 is not UTF-8\)'): read_settings(f)
    with pytest.raises(SettingsError, match=r'settings\.ini: not a text file'): get_settings(f)
    clean_env.setenv('SNIPNB_SETTINGS', str(f))
    with pytest.raises(SettingsError, match=r'settings\.ini: not a text file'): get_settings()
    (tmp_path/'sub').mkdir()
    clean_env.setenv('SNIPNB_SETTINGS', str(tmp_path/'sub'))
    with pytest.raises(SettingsError, match=r"SNIPNB_SETTINGS=.*sub': no such file"): get_settings()
