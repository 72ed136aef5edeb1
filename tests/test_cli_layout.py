"""A run folder's layout: which folder ``load_pretrained`` reads for a run (issue 20, item 7)."""

from __future__ import annotations

from anyformer.cli.layout import MODEL_CONFIG, list_checkpoints, newest_checkpoint
from anyformer.serialization import CONFIG_NAME


def _checkpoint(run, step: int, complete: bool = True):
    folder = run / "checkpoints" / f"step_{step:07d}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if complete:
        (folder / "trainer_state.pt").write_bytes(b"")
    return folder


def test_the_model_file_name_is_the_librarys():
    assert MODEL_CONFIG == CONFIG_NAME == "config.json"


def test_a_run_folder_is_its_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 20)
    newest = _checkpoint(run, 100)
    _checkpoint(run, 300, complete=False)  # no trainer state: not (yet) a checkpoint
    (run / "checkpoints" / "step_notanumber").mkdir()
    assert [s for s, _ in list_checkpoints(run)] == [20, 100]
    assert newest_checkpoint(run) == newest
    assert newest_checkpoint(str(run)) == newest


def test_other_paths_are_left_as_given(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    _checkpoint(model, 5)  # a model folder is a model folder, whatever else it holds
    assert newest_checkpoint(model) == model
    assert newest_checkpoint(tmp_path / "missing") == tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    assert newest_checkpoint(tmp_path / "empty") == tmp_path / "empty"
