"""bench/host.py: the host-overhead harness counts launches right and stops every Triton launch. Nothing here is
timed. The harness runs in a subprocess without TRITON_INTERPRET (this process's kernels are the interpreter's
where no GPU is present), once for the module: a few op cases, one training step each at 67x67 and the harness's
self-check (about 15 s)."""

import pytest
import torch
from alexnet_triton.kernels import _common

import alexnet_triton as at
from bench import host

CASES = ("conv1", "conv2", "lrn_pool1", "pool5", "dropout6")
REPEATS = 3
CONV_FORWARD_AND_BACKWARD = ["_conv_fwd_kernel", "_relu_grad_kernel", "_conv_fwd_kernel", "_conv_wgrad_kernel"]


@pytest.fixture(scope="module")
def measured() -> dict:
    return host.measure_in_subprocess(
        ["--repeats", str(REPEATS), "--warmup", "1", "--cases", ",".join(CASES), "--step-batch", "2",
         "--image-size", "67", "--layouts", "channels_last", "--self-check"]
    )  # fmt: skip


def op(measured: dict, case: str, direction: str) -> dict:
    return next(row for row in measured["ops"] if row["case"] == case and row["direction"] == direction)


def backward_launches(measured: dict, case: str) -> int:
    """The Triton launches of the case's backward: forward+backward's less the forward's."""
    both, forward = (len(op(measured, case, d)["ours"]["triton"]) for d in ("forward+backward", "forward"))
    return both - forward


def test_conv_launches_its_kernels(measured):
    forward = op(measured, "conv2", "forward")["ours"]
    assert (forward["triton"], forward["aten"]) == (["_conv_fwd_kernel"], [])  # channels_last weight: no copy
    assert op(measured, "conv2", "forward+backward")["ours"]["triton"] == CONV_FORWARD_AND_BACKWARD
    # conv1 reads the image, which needs no gradient: no input-gradient launch. Its forward and weight gradient run on
    # the image cut into blocks (kernels/space_to_depth.py), each cutting it.
    assert op(measured, "conv1", "forward")["ours"]["triton"] == ["_space_to_depth_kernel", "_conv_fwd_kernel"]
    assert op(measured, "conv1", "forward+backward")["ours"]["triton"] == [
        "_space_to_depth_kernel",
        "_conv_fwd_kernel",
        "_relu_grad_kernel",
        "_space_to_depth_kernel",
        "_conv_wgrad_kernel",
    ]


def test_every_op_forward_is_one_triton_launch_and_eager_none(measured):
    for row in measured["ops"]:
        if row["direction"] == "forward" and row["case"] != "conv1":  # conv1 also cuts its image into blocks
            assert len(row["ours"]["triton"]) == 1, row
        assert row["eager"]["triton"] == [], row
        assert row["eager"]["aten"], row
    assert op(measured, "conv2", "forward")["eager"]["aten"] == ["aten::convolution", "aten::relu"]
    # Eager dropout as CUDA runs it: one fused op each way.
    assert op(measured, "dropout6", "forward+backward")["eager"]["aten"] == [
        "aten::native_dropout",
        "aten::native_dropout_backward",
    ]


def test_samples_are_kept_for_every_timed_call(measured):
    for row in measured["ops"]:
        for impl in host.IMPLEMENTATIONS:
            samples = row[impl]["samples_ns"]
            assert len(samples) >= REPEATS and all(sample > 0 for sample in samples)
            assert row[impl]["median_us"] > 0


def test_no_kernel_is_compiled_or_launched_for_real(measured):
    checks = measured["checks"]
    assert checks["compile_calls"] == 0
    assert checks["fresh_variant"] == ["_max_pool_fwd_kernel"]  # a variant never seen: its "compile" is the stub's
    assert checks["cached_kernels"] >= 1 and checks["cached_kernels_all_stubs"]
    assert checks["conv_stopped_at_jit_run"]["triton"] == ["_conv_fwd_kernel"]


def test_a_planted_triton_launch_is_counted(measured):
    checks = measured["checks"]
    assert checks["conv_nchw_weight"]["triton"] == ["_conv_fwd_kernel"]
    assert checks["conv_launched_twice"]["triton"] == ["_conv_fwd_kernel"] * 2


def test_planted_aten_ops_count_by_the_rule(measured):
    planted = measured["checks"]["planted_aten"]
    assert planted["clone"] == ["aten::clone"]
    assert planted["contiguous_copy"] == ["aten::clone"]  # a composite op counts what it runs
    assert planted["view"] == planted["empty_like"] == planted["contiguous_noop"] == []
    assert measured["checks"]["pool"] == {"triton": ["_max_pool_fwd_kernel"], "aten": []}


def test_aten_ops_inside_our_ops_are_counted(measured):
    # An NCHW weight is copied to channels_last inside the conv op, before its kernel.
    assert measured["checks"]["conv_nchw_weight"]["aten"] == ["aten::clone"]


def test_everything_is_restored_after(measured):
    assert measured["checks"]["restored"] == {
        "backends": True,
        "autotuner_caches_empty": True,
        "no_stub_kernels": True,
        "cpu_backend": "torch",
    }


def test_training_step_launches_compose_from_the_ops(measured):
    with torch.device("meta"):
        model = at.AlexNet(1000, image_size=67)
    per_module = {at.nn.LRNMaxPool2d: "lrn_pool1", at.nn.MaxPool2d: "pool5", at.nn.Dropout: "dropout6"}
    forward = backward = 0
    for name, module in model.named_modules():
        if isinstance(module, at.nn.Conv2dReLU):
            if name.endswith("conv1"):  # both towers' conv1 are one convolution (AlexNet.conv1_together)
                continue
            case = "conv2"
        elif type(module) in per_module:
            case = per_module[type(module)]
        else:
            continue
        forward += len(op(measured, case, "forward")["ours"]["triton"])
        backward += backward_launches(measured, case)
    forward += len(op(measured, "conv1", "forward")["ours"]["triton"])
    backward += backward_launches(measured, "conv1")
    ours = measured["steps"]["ours channels_last"]
    assert len(ours["forward"]["triton"]) == forward == 24
    assert len(ours["backward"]["triton"]) == backward
    assert ours["optimizer"] == {"triton": [], "aten": ["aten::_fused_sgd_"]}


def test_the_twin_launches_aten_only(measured):
    twin = measured["steps"]["eager channels_last"]
    assert all(not phase["triton"] for phase in twin.values())
    assert twin["forward"]["aten"].count("aten::convolution") == 5
    assert twin["forward"]["aten"].count("aten::native_dropout") == 2
    assert twin["backward"]["aten"].count("aten::convolution_backward") == 5
    assert twin["optimizer"]["aten"] == ["aten::_fused_sgd_"]


def test_the_twins_launches_do_not_depend_on_the_batch(measured):
    by_batch = measured["checks"]["twin_step_by_batch"]
    assert by_batch["2"] == by_batch["3"]
    assert by_batch["2"]["aten"]


def test_the_table_has_every_row(measured):
    text = host.table(measured)
    assert "not GPU time" in text
    assert text.count("| conv2d_relu | conv2 |") == 2
    assert "| ours | channels_last | **step** | **" in text


def test_the_counting_rule():
    assert host.launches_a_kernel(torch.ops.aten.clone.default)
    assert host.launches_a_kernel(torch.ops.aten.add.Tensor)
    for no_kernel in ("view.default", "t.default", "empty.memory_format", "_unsafe_view.default", "detach.default"):
        packet, overload = no_kernel.split(".")
        assert not host.launches_a_kernel(getattr(getattr(torch.ops.aten, packet), overload)), no_kernel


def test_aten_ops_are_counted_by_phase():
    x = torch.randn(4, 4)
    with host.counting() as counted:
        counted.phase("first")
        y = x.clone().view(16)
        counted.phase("second")
        torch.empty_like(y).t()
        y + 1
    assert counted.count.names("aten", "first") == ["aten::clone"]
    assert counted.count.names("aten", "second") == ["aten::add"]
    assert counted.count.triton == []


def test_replay_gives_back_the_samples():
    clock = host.Replay([1000, 2500])
    first = (clock(), clock())
    second = (clock(), clock())
    assert first[1] - first[0] == pytest.approx(1e-6)
    assert second[1] - second[0] == pytest.approx(2.5e-6)


@pytest.mark.skipif(not _common.INTERPRET, reason="only a process whose kernels are the interpreter's refuses")
def test_an_interpreter_process_refuses_to_measure():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"), host.compiled_path_on_cpu():
        pass


def test_a_repeated_launch_goes_straight_to_its_compiled_kernel_with_the_same_arguments(measured):
    remembered = measured["checks"]["remembered_launches"]
    assert set(remembered) == set(host.small_cases())
    for case, facts in remembered.items():
        assert facts["launches"] >= 2, case  # forward and backward
        assert facts["jit_runs_first"] >= 1, case  # a new key goes the whole way ...
        assert facts["jit_runs_again"] == 0, case  # ... and its repeat straight to the compiled launcher
        assert facts["same_arguments"], f"{case}: the remembered launch was given other arguments than the first"
        assert facts["jit_runs_hooked"] == facts["launches"], f"{case}: a launch hook must see every launch"
