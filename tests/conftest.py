import os

os.environ.setdefault('GLOG_v', '3')

import mindspore as ms  # noqa: E402
import pytest  # noqa: E402

ms.set_device('CPU')


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """MindSpore drops side files (rank_0/, kernel_meta/) into the working directory."""
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
