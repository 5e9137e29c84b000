"""bench/workloads.py: the work each benchmark counts, and AlexNet's layer shapes it times."""

from bench.workloads import alexnet_cases, byte_count, flop_count, flops_per_image, output_shape

# (output size, output channels, input channels per output, kernel size) of each layer of the whole
# network at 227x227, from the paper's figure 2; fc layers as 1x1 outputs.
PAPER_LAYERS = [
    (55, 96, 3, 11),
    (27, 256, 48, 5),
    (13, 384, 256, 3),
    (13, 384, 192, 3),
    (13, 256, 192, 3),
    (1, 4096, 256 * 6 * 6, 1),
    (1, 4096, 4096, 1),
    (1, 1000, 4096, 1),
]


def multiply_adds(layer) -> int:
    size, out_channels, in_channels, kernel = layer
    return size * size * out_channels * in_channels * kernel * kernel


def test_forward_flops_are_the_paper_network_multiply_adds_twice():
    macs = sum(multiply_adds(layer) for layer in PAPER_LAYERS)
    assert 0.70e9 < macs < 0.74e9  # "about 0.72 G multiply-adds", as the issue states
    assert flops_per_image("inference", 227) == 2 * macs


def test_training_flops_add_two_backward_products_except_the_image_gradient():
    macs = sum(multiply_adds(layer) for layer in PAPER_LAYERS)
    conv1 = multiply_adds(PAPER_LAYERS[0])
    assert flops_per_image("training", 227) == 2 * (3 * macs - conv1)  # about 4.3 GFLOP


def test_op_counts_follow_the_shapes():
    cases = alexnet_cases(batch=4, image_size=227)
    pool = cases["pool1"]
    assert pool.shapes == ((4, 48, 55, 55),) and output_shape(pool) == (4, 48, 27, 27)
    x, y = 4 * 48 * 55 * 55, 4 * 48 * 27 * 27
    assert byte_count(pool, "forward", 2) == 2 * (x + y)
    assert byte_count(pool, "forward+backward", 2) == 2 * (x + y + y + x)
    assert flop_count(pool, "forward") == 0

    conv2 = cases["conv2"]
    forward = 2 * 4 * 128 * 27 * 27 * 48 * 5 * 5
    assert flop_count(conv2, "forward") == forward
    assert flop_count(conv2, "forward+backward") == 3 * forward
    # conv1's image gets no gradient, so its backward is the weight gradient only.
    conv1_forward = flop_count(cases["conv1"], "forward")
    assert flop_count(cases["conv1"], "forward+backward") == 2 * conv1_forward


def test_cases_are_the_paper_layers_per_tower():
    # Figure 2, one tower at 227x227: conv3 reads both towers' maps (2 x 128 channels), the rest their own.
    batch = 3
    conv = {
        "conv1": ((batch, 3, 227, 227), (48, 3, 11, 11), (48,)),
        "conv2": ((batch, 48, 27, 27), (128, 48, 5, 5), (128,)),
        "conv3": ((batch, 256, 13, 13), (192, 256, 3, 3), (192,)),
        "conv4": ((batch, 192, 13, 13), (192, 192, 3, 3), (192,)),
        "conv5": ((batch, 192, 13, 13), (128, 192, 3, 3), (128,)),
    }
    one_input = {
        "lrn1": (batch, 48, 55, 55),
        "lrn2": (batch, 128, 27, 27),
        "pool1": (batch, 48, 55, 55),
        "pool2": (batch, 128, 27, 27),
        "pool5": (batch, 128, 13, 13),
        "dropout6": (batch, 2048, 1, 1),
        "dropout-large": (batch, 48, 55, 55),
    }
    cases = alexnet_cases(batch, 227)
    assert {name: case.shapes for name, case in cases.items()} == conv | {k: (v,) for k, v in one_input.items()}
    assert cases["conv1"].needs_grad == (False, True, True), "the image needs no gradient"
    assert all(case.needs_grad[0] for name, case in cases.items() if name != "conv1")
    assert output_shape(cases["conv1"]) == (batch, 48, 55, 55) and output_shape(cases["pool5"]) == (batch, 128, 6, 6)
