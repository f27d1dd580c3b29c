"""The app starts on 127.0.0.1 and shows the four tabs; the Parameters tab is built from the table."""

import json
import urllib.request

import pytest
from conftest import free_port

from charlora.params import PARAMS
from charlora.ui.app import TAB_NAMES, build_app, parse_args, serve


@pytest.fixture(scope="module")
def app_config():
    demo = build_app()
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            yield json.load(response)
    finally:
        demo.close()


def test_four_tabs_in_order(app_config):
    tabs = [c["props"]["label"] for c in app_config["components"] if c["type"] == "tabitem"]
    assert tabs == list(TAB_NAMES) == ["Dataset", "Parameters", "Training", "Evaluation"]


def test_parameters_tab_has_a_control_for_every_non_secret_param(app_config):
    elem_ids = {c["props"].get("elem_id") for c in app_config["components"]}
    for param in PARAMS:
        if not param.secret:
            assert f"param-{param.key}" in elem_ids, param.key
    assert "param-wandb_api_key" not in elem_ids


def test_dim_alpha_lr_are_sliders(app_config):
    kinds = {c["props"].get("elem_id"): c["type"] for c in app_config["components"]}
    for key in ("network_dim", "network_alpha", "learning_rate", "unet_lr", "text_encoder_lr"):
        assert kinds[f"param-{key}"] == "slider", key


def test_listen_needs_auth():
    with pytest.raises(SystemExit):
        parse_args(["--listen"])
    args = parse_args(["--listen", "--auth", "me:pw", "--port", "9000"])
    assert args.listen and args.port == 9000


def test_auth_file(tmp_path):
    from charlora.ui.app import read_auth

    auth = tmp_path / "users.txt"
    auth.write_text("# people allowed\nmum:secret\ndad:other\n")
    args = parse_args(["--listen", "--auth-file", str(auth)])
    assert read_auth(args) == [("mum", "secret"), ("dad", "other")]
    auth.write_text("no-colon\n")
    with pytest.raises(SystemExit):
        read_auth(parse_args(["--listen", "--auth-file", str(auth)]))
    with pytest.raises(SystemExit):
        parse_args(["--listen", "--port", "7000"])


def test_controls_have_human_labels_with_kohyas_key(app_config):
    props = {c["props"].get("elem_id"): c["props"] for c in app_config["components"]}
    dim = props["param-network_dim"]
    assert dim["label"] == "Network rank (dimension)" and dim["info"].startswith("network_dim · ")
    assert props["param-unet_lr"]["label"] == "UNet learning rate"
    # a key without a declared label still reads as words, never as a bare key with underscores
    assert "_" not in props["param-bucket_reso_steps"]["label"]
    assert "recent-train_data_dir" in props and "recent-pretrained_model_name_or_path" in props


def test_the_served_app_polls_its_queue_gently():
    """gradio's queue loop wakes every 1 ms on Linux by default; the app sets its Windows values."""
    from charlora.ui.app import quiet_queue

    demo = build_app()
    quiet_queue(demo)
    assert (demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free) == (0.05, 0.1)
