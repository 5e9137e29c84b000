"""The trainer's command line (alexnet_triton/train_options.py): defaults per dataset, checks, layout flags."""

import pytest

from alexnet_triton import train_options


def test_channels_last_is_the_default_on_a_gpu_and_can_be_turned_off():
    assert train_options.parse_args(["--device", "cuda"]).channels_last is True
    assert train_options.parse_args(["--device", "cuda", "--no-channels-last"]).channels_last is False
    assert train_options.parse_args(["--device", "cpu"]).channels_last is False
    assert train_options.parse_args(["--device", "cpu", "--channels-last"]).channels_last is True


def test_defaults_follow_the_data():
    builtin = train_options.parse_args([])
    assert (builtin.epochs, builtin.batch_size, builtin.image_size, builtin.init) == (10, 64, 67, "kaiming")
    paper = train_options.parse_args(["--data", "somewhere"])
    assert (paper.epochs, paper.batch_size, paper.image_size, paper.init) == (90, 128, 227, "paper")
    assert train_options.parse_args(["--epochs", "3"]).epochs == 3


def test_the_loss_is_read_every_20_steps_unless_told():
    assert train_options.parse_args([]).log_every == 20
    assert train_options.parse_args(["--log-every", "1"]).log_every == 1


@pytest.mark.parametrize("option", ["--epochs", "--batch-size", "--train-size", "--log-every"])
def test_sizes_must_be_positive(option, capsys):
    with pytest.raises(SystemExit):
        train_options.parse_args([option, "0"])
    assert f"{option} must be positive" in capsys.readouterr().err


def test_fp16_is_refused_on_a_cpu(capsys):
    with pytest.raises(SystemExit):
        train_options.parse_args(["--device", "cpu", "--amp", "fp16"])
    assert "--amp fp16 needs a GPU" in capsys.readouterr().err
    assert train_options.parse_args(["--device", "cpu", "--amp", "bf16"]).amp == "bf16"


def test_cuda_graphs_are_the_default_on_a_gpu_and_refused_on_a_cpu(capsys):
    assert train_options.parse_args(["--device", "cuda"]).cuda_graphs is True
    assert train_options.parse_args(["--device", "cuda", "--no-cuda-graphs"]).cuda_graphs is False
    assert train_options.parse_args(["--device", "cpu"]).cuda_graphs is False, "off on a CPU, silently"
    assert train_options.parse_args(["--device", "cpu", "--no-cuda-graphs"]).cuda_graphs is False
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as stopped:
        train_options.parse_args(["--device", "cpu", "--cuda-graphs"])
    assert stopped.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.endswith("error: --cuda-graphs needs a GPU (a CUDA graph replays GPU work); leave it out on a CPU")


def test_compile_is_off_unless_asked_for():
    assert train_options.parse_args([]).compile is False
    assert train_options.parse_args(["--compile"]).compile is True
