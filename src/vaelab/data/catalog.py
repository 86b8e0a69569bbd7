"""The built-in datasets: names, files, checksums, mirrors and class names (data only, no I/O).

Where their files are looked for and how they are read lives in
`vaelab.data.sources` (the IDX datasets) and `vaelab.data.named` (the others).

Checksums. Only the MNIST and Fashion-MNIST SHA-256 values come from the
datasets' own pages. For the other datasets the authors publish no SHA-256 (the
CIFAR page gives an MD5, the rest nothing): the SHA-256 values below are the ones
TensorFlow Datasets recorded from the same official URLs
(github.com/tensorflow/datasets, tensorflow_datasets/url_checksums/<name>.txt),
with the byte sizes recorded there. Omniglot's chardata.mat has no published
checksum at all: it is checked against its git blob id in the IWAE repository,
at the commit its URL names (see RemoteFile).
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

IDX_DATASETS["kmnist"] = IdxDataset(
    name="kmnist",
    files=_MNIST_FILES,
    # SHA-256 recorded by TensorFlow Datasets (url_checksums/kmnist.txt); the KMNIST page publishes none
    sha256=dict(
        train_images="51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",  # 18,165,135 bytes
        train_labels="e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",  # 29,497
        test_images="edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",  # 3,041,136
        test_labels="20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",  # 5,120
    ),
    mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # the ten hiragana, romanized
    homepage="https://github.com/rois-codh/kmnist",
)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as its authors serve it."""

    name: str  # the file's name in the dataset directory
    urls: tuple[str, ...]  # the official URL first, then mirrors (tried in order)
    sha256: str | None  # None: no SHA-256 published anywhere; then `git_blob` (or at least `size`) is checked
    size: int | None = None  # bytes, where known
    git_blob: str | None = None  # git's blob id (SHA-1 of b"blob <size>\0" + bytes), for files kept in git


@dataclass(frozen=True)
class NamedDataset:
    """A dataset read from its authors' own files (not IDX): what to fetch, how many images, which settings."""

    name: str
    folder: str  # its directory below the cache or a --data-dir (the EMNIST splits share one download)
    files: tuple[RemoteFile, ...]  # what is downloaded
    # what a directory must hold for the dataset to count there: one or more alternatives, each a tuple of
    # relative paths that must all exist (a name ending in .gz also counts without it); the first is `files`
    forms: tuple[tuple[str, ...], ...]
    image_shape: tuple[int, int, int]  # as read (CelebA: at the default size, 64)
    train: int  # official training images (with the official validation images where there are some)
    test: int
    classes: tuple[str, ...]
    homepage: str
    # the config settings the literature uses with it: the preset in configs/datasets/ sets them
    recommended: tuple[tuple[str, str], ...]
    about: str  # one line for `vaelab datasets`
    by_hand: str | None = None  # where people get the files when the URLs are not for browsers

    @property
    def download_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]


_NATURAL = (("data.binarize", "none"), ("model.likelihood", "logistic_mixture"))  # 8-bit RGB photographs
_GREY = (("data.binarize", "dynamic"),)  # grey levels, binarized afresh each time (the default)
_CIFAR_BATCHES = tuple(f"cifar-10-batches-bin/{b}.bin" for b in
                       ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"))
_EMNIST_ZIP = RemoteFile(
    "gzip.zip",
    ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
     "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip"),
    # SHA-256 recorded by TensorFlow Datasets from the itl.nist.gov URL (url_checksums/emnist.txt); NIST
    # publishes none (torchvision pins the MD5 58c8d27c78d21e728a6bc7b3cc06412e)
    "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e", 561_753_746,
)


def _emnist_form(split: str) -> tuple[str, ...]:
    return tuple(f"emnist-{split}-{part}-ubyte.gz" for part in
                 ("train-images-idx3", "train-labels-idx1", "test-images-idx3", "test-labels-idx1"))


_LARO = "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
_DRIVE_OLD = "https://drive.google.com/uc?export=download&id="
_CELEBA_IMAGES, _CELEBA_SPLITS = "0B7EVK8r0v71pZjFTYXZWM3FlRnM", "0B7EVK8r0v71pY0NSMzRuSXJEVkk"
_IWAE_COMMIT = "78a6075484bd7dd6f47a4bb9880d2295bc7a5220"  # the commit that added chardata.mat (yburda/iwae)

NAMED: dict[str, NamedDataset] = {
    "cifar10": NamedDataset(
        "cifar10", "cifar10",
        # SHA-256 recorded by TensorFlow Datasets (url_checksums/cifar10.txt); the CIFAR page publishes the MD5
        # c32a1d4ab5d03f1284b67883e8d87530 of the same file
        (RemoteFile("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170_052_171),),
        (("cifar-10-binary.tar.gz",), _CIFAR_BATCHES),
        (3, 32, 32), 50_000, 10_000,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "https://www.cs.toronto.edu/~kriz/cifar.html", _NATURAL,
        "CIFAR-10, the binary version: 32x32 RGB photographs, 10 classes",
    ),
    "svhn": NamedDataset(
        "svhn", "svhn",
        # SHA-256 recorded by TensorFlow Datasets (url_checksums/svhn_cropped.txt); the SVHN page publishes none
        (RemoteFile("train_32x32.mat", ("https://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                    "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", 182_040_794),
         RemoteFile("test_32x32.mat", ("https://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                    "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", 64_275_384)),
        (("train_32x32.mat", "test_32x32.mat"),),
        (3, 32, 32), 73_257, 26_032, tuple(str(i) for i in range(10)),
        "http://ufldl.stanford.edu/housenumbers/", _NATURAL,
        "SVHN cropped digits (format 2, without 'extra'): 32x32 RGB house numbers",
    ),
    "celeba": NamedDataset(
        "celeba", "celeba",
        # SHA-256 recorded by TensorFlow Datasets (url_checksums/celeb_a.txt); the CelebA page publishes none.
        # The files live on Google Drive, which may answer with a quota page instead: then the checksum
        # fails and the message says where to put the files downloaded by hand
        (RemoteFile("img_align_celeba.zip", (_DRIVE + _CELEBA_IMAGES, _DRIVE_OLD + _CELEBA_IMAGES),
                    "46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74", 1_443_490_838),
         RemoteFile("list_eval_partition.txt", (_DRIVE + _CELEBA_SPLITS, _DRIVE_OLD + _CELEBA_SPLITS),
                    "fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7", 2_836_386)),
        (("img_align_celeba.zip", "list_eval_partition.txt"), ("img_align_celeba", "list_eval_partition.txt")),
        (3, 64, 64), 182_637, 19_962, (),
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html", _NATURAL,
        "CelebA aligned faces: the 148-pixel centre crop, resized to 64 (data.image_size)",
        by_hand="the 'Align&Cropped Images' and 'Train/Val/Test Partitions' links of "
                "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    ),
    "omniglot": NamedDataset(
        "omniglot", "omniglot",
        # No checksum of chardata.mat is published (neither SHA-256 nor MD5, nor its size): it is pinned by
        # the commit in its URL and checked against its git blob id in that commit's tree
        (RemoteFile("chardata.mat", (f"https://raw.githubusercontent.com/yburda/iwae/{_IWAE_COMMIT}/datasets/"
                                     "OMNIGLOT/chardata.mat",),
                    None, None, git_blob="016a3536ffe5e1d38e42563a18d7a78bfaf643ec"),),
        (("chardata.mat",),),
        (1, 28, 28), 24_345, 8_070, tuple(f"alphabet {i}" for i in range(1, 51)),
        "https://github.com/yburda/iwae", _GREY,
        "Omniglot 28x28 (Burda et al.'s chardata.mat, as in the IWAE and VampPrior papers), 50 alphabets",
    ),
    "emnist": NamedDataset(
        "emnist", "emnist", (_EMNIST_ZIP,), (("gzip.zip",), _emnist_form("balanced")),
        (1, 28, 28), 112_800, 18_800,
        tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("abdefghnqrt"),
        "https://www.nist.gov/itl/products-and-services/emnist-dataset", _GREY,
        "EMNIST balanced: 28x28 handwritten digits and letters, 47 classes",
    ),
    "emnist-letters": NamedDataset(
        "emnist-letters", "emnist", (_EMNIST_ZIP,), (("gzip.zip",), _emnist_form("letters")),
        (1, 28, 28), 124_800, 20_800, tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        "https://www.nist.gov/itl/products-and-services/emnist-dataset", _GREY,
        "EMNIST letters: 28x28 handwritten letters, upper and lower case merged, 26 classes",
    ),
    "binarized-mnist": NamedDataset(
        "binarized-mnist", "binarized-mnist",
        # SHA-256 recorded by TensorFlow Datasets (url_checksums/binarized_mnist.txt); none published by the authors
        (RemoteFile("binarized_mnist_train.amat", (_LARO + "binarized_mnist_train.amat",),
                    "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d", 78_400_000),
         RemoteFile("binarized_mnist_valid.amat", (_LARO + "binarized_mnist_valid.amat",),
                    "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2", 15_680_000),
         RemoteFile("binarized_mnist_test.amat", (_LARO + "binarized_mnist_test.amat",),
                    "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c", 15_680_000)),
        (("binarized_mnist_train.amat", "binarized_mnist_valid.amat", "binarized_mnist_test.amat"),),
        (1, 28, 28), 60_000, 10_000, (),
        _LARO, (("data.binarize", "static"),),
        "MNIST with Larochelle's fixed binarization (Salakhutdinov & Murray 2008): already binary, no labels",
    ),
}

BUILTIN = ("fashion-mnist", "mnist", "digits", "kmnist", "emnist", "emnist-letters", "binarized-mnist",
           "omniglot", "cifar10", "svhn", "celeba")
