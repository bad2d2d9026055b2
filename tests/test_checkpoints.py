"""Checkpoint identity by content, and what a killed run leaves behind."""

from srlm.checkpoints import checkpoint_id_for, commit_dir, leftovers, remove_leftovers


def test_the_id_follows_the_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "weights.bin").write_bytes(b"123")
    assert checkpoint_id_for("M1", a) == checkpoint_id_for("M1", b)
    (b / "weights.bin").write_bytes(b"124")
    assert checkpoint_id_for("M1", a) != checkpoint_id_for("M1", b)


def test_the_id_leaves_out_the_home_path_and_set_order_peft_writes(tmp_path):
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    for d, home, modules in ((a, "/one/models/base", ["q_proj", "v_proj"]), (b, "/two/models/base", ["v_proj", "q_proj"])):
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"123")
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": home, "r": 8, "target_modules": modules}))
        (d / "README.md").write_text(f"base_model: {home}")
    assert checkpoint_id_for("M1", a) == checkpoint_id_for("M1", b)
    (b / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/two", "r": 16, "target_modules": ["q_proj"]}))
    assert checkpoint_id_for("M1", a) != checkpoint_id_for("M1", b)


def test_commit_keeps_identical_content_already_there(tmp_path):
    staging, final = tmp_path / "run-1", tmp_path / "M1-abc"
    final.mkdir()
    staging.mkdir()
    assert commit_dir(staging, final) == final and not staging.exists()


def test_leftovers_of_a_killed_run_are_found_and_only_they(tmp_path):
    kept = [tmp_path / "checkpoints" / "sft" / "sft-123", tmp_path / "models" / "smollm2-abc", tmp_path / "tables" / "data"]
    for d in kept:
        d.mkdir(parents=True)
    (tmp_path / "tables" / "data" / "instructions.parquet").write_bytes(b"x")
    stale = [
        tmp_path / "checkpoints" / "sft" / "run-9f2",  # trained, never committed
        tmp_path / "checkpoints" / "sft" / ".run-9f2.tmp-1a2b3c4d",  # adapter half saved
        tmp_path / "models" / ".smollm2-abc.tmp-0f0f0f0f",  # conversion half written
    ]
    for d in stale:
        d.mkdir(parents=True)
    half_table = tmp_path / "tables" / "data" / ".instructions.parquet.k2j3.tmp"
    half_table.write_bytes(b"half")
    assert leftovers(tmp_path) == sorted([*stale, half_table])
    remove_leftovers(tmp_path)
    assert leftovers(tmp_path) == [] and all(d.exists() for d in kept)
