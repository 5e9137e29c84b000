"""The state a run trains and saves (alexnet_triton/training_state.py): the learning-rate schedule, and the
round trip through a checkpoint that a resume relies on."""

import torch

from alexnet_triton import checkpoint, train_options
from alexnet_triton.checkpoint import Position
from alexnet_triton.training_state import TrainingState


def small_state(final_lr_epochs: int, lr: float = 0.01, lr_patience: int = 2) -> TrainingState:
    args = train_options.parse_args(["--epochs", "4", "--lr", str(lr), "--final-lr-epochs", str(final_lr_epochs),
                             "--lr-patience", str(lr_patience)])  # fmt: skip
    images = {"resize": 76, "store_side": 256}
    stats = {"mean": torch.zeros(3)}
    state = TrainingState.start(args, torch.device("cpu"), [str(i) for i in range(10)], stats, images)
    return state


def learning_rates(state: TrainingState, errors: list[float], epochs: int) -> list[float]:
    """The rate each epoch trains at, scheduling after each with the given validation errors."""
    rates = []
    for done, error in enumerate(errors, start=1):
        rates.append(state.optimizer.param_groups[0]["lr"])
        state.schedule(error, epochs_done=done, epochs=epochs)
    return rates


def test_the_last_epochs_run_at_a_tenth_of_the_rate():
    improving = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert learning_rates(small_state(final_lr_epochs=1), improving, epochs=5) == [0.01] * 4 + [0.001]
    rates = learning_rates(small_state(final_lr_epochs=2), improving, epochs=5)
    assert rates == [0.01] * 3 + [0.001] * 2
    assert learning_rates(small_state(final_lr_epochs=0), improving, epochs=5) == [0.01] * 5
    assert learning_rates(small_state(final_lr_epochs=5), improving, epochs=5) == [0.01] * 5, "no epoch before"


def test_the_plateau_rule_still_divides_by_ten():
    stuck = [0.5, 0.6, 0.6, 0.6, 0.6]  # no better error after the first: a drop after patience + 1 epochs
    rates = learning_rates(small_state(final_lr_epochs=0, lr_patience=1), stuck, epochs=5)
    assert rates == [0.01, 0.01, 0.01, 0.001, 0.001]


def test_a_checkpoint_restores_what_was_saved(tmp_path):
    state = small_state(final_lr_epochs=1)
    args = train_options.parse_args(["--epochs", "4"])
    state.position = Position(epoch=2, batches_done=5, global_step=131)
    state.best_top1_error, state.history = 0.25, [{"epoch": 1}, {"epoch": 2}]
    for parameter in state.model.parameters():  # a step, so that every parameter has a momentum buffer
        parameter.grad = torch.randn_like(parameter)
    state.optimizer.step()
    learning_rates(state, [0.5, 0.4, 0.3], epochs=4)  # the drop after the third epoch
    # An fp16 run's loss scaler, as on a GPU (a CPU run's is disabled, and its state empty).
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    path = str(tmp_path / "last.pt")
    checkpoint.save(state.to_checkpoint(args).to_dict(), path)
    next_draws = torch.rand(8)  # what the run would have drawn next
    saved = checkpoint.read(path)

    torch.manual_seed(12345)  # another run's weights and generator
    again = small_state(final_lr_epochs=1)
    again.scaler = torch.amp.GradScaler("cpu")
    again.restore(saved, path)
    assert torch.equal(torch.rand(8), next_draws), "PyTorch's generator continues where it was saved"
    assert again.position == state.position and again.best_top1_error == 0.25 and again.history == state.history
    assert again.optimizer.param_groups[0]["lr"] == 0.001 == state.optimizer.param_groups[0]["lr"]
    assert again.scheduler.state_dict() == state.scheduler.state_dict()
    assert again.scaler.state_dict() == state.scaler.state_dict() != torch.amp.GradScaler("cpu").state_dict()
    for name, value in state.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value), name
    restored, original = again.optimizer.state_dict(), state.optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    assert list(restored["state"]) == list(original["state"]) == list(range(len(list(state.model.parameters()))))
    for index, buffers in original["state"].items():
        assert torch.equal(restored["state"][index]["momentum_buffer"], buffers["momentum_buffer"]), index
    for key, value in state.stats.items():  # the resume builds its state with the checkpoint's statistics
        assert torch.equal(saved.stats[key], value), key
    assert saved.images == state.images == {"resize": 76, "store_side": 256} and saved.resize == 76
