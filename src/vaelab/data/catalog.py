"""The built-in datasets: names, files, checksums, mirrors and class names (data only, no I/O).

Where their files are looked for and how they are read lives in
`vaelab.data.sources`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IdxDataset:
    name: str
    files: dict[str, str]  # role -> file name (without .gz)
    sha256: dict[str, str]  # role -> SHA-256 of the official .gz file
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    homepage: str


_MNIST_FILES = dict(
    train_images="train-images-idx3-ubyte",
    train_labels="train-labels-idx1-ubyte",
    test_images="t10k-images-idx3-ubyte",
    test_labels="t10k-labels-idx1-ubyte",
)

IDX_DATASETS: dict[str, IdxDataset] = {
    "fashion-mnist": IdxDataset(
        name="fashion-mnist",
        files=_MNIST_FILES,
        sha256=dict(
            train_images="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            train_labels="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            test_images="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            test_labels="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
        mirrors=(
            "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "mnist": IdxDataset(
        name="mnist",
        files=_MNIST_FILES,
        sha256=dict(
            train_images="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            train_labels="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            test_images="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            test_labels="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        classes=tuple(str(i) for i in range(10)),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
}

BUILTIN = ("fashion-mnist", "mnist", "digits")
