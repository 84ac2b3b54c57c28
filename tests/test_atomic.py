import os
import stat

from pipeline import atomic


def test_an_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    atomic.write_json(tmp_path / "out.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode)
    assert atomic.read_json(tmp_path / "out.json") == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))
