import pytest

from vaelab.config import (
    DataConfig, ModelConfig, RunConfig, TrainConfig, from_dict, load_config, to_dict, to_toml,
)
from vaelab.errors import ConfigError


def test_defaults_are_the_documented_seed():
    cfg = RunConfig()
    assert (cfg.model.latent_dim, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.beta) == \
        (20, 10, 128, 1e-3, 1.0)
    assert cfg.model.likelihood == "bernoulli" and cfg.data.binarize == "dynamic"
    assert cfg.data.dataset == "fashion-mnist"


def test_frozen():
    with pytest.raises(Exception):
        RunConfig().train.epochs = 3  # type: ignore[misc]


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = 3\nlr = 0.01\n[model]\nconv_channels = [16, 32, 64]\n')
    cfg = load_config(path, ["train.epochs=5", "data.dataset=folder:/some/where", "data.image_size=none"])
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.01
    assert cfg.model.conv_channels == (16, 32, 64)
    assert cfg.data.dataset == "folder:/some/where" and cfg.data.image_size is None


def test_int_accepted_for_float_not_the_reverse():
    assert load_config(overrides=["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        load_config(overrides=["train.epochs=2.5"])


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown key train.epoch.*did you mean train.epochs"),
    ("training.epochs=3", "unknown section"),
    ("epochs=3", "must be section.key"),
    ("train.epochs", "must look like section.key=value"),
    ("model.likelihood=poisson", "model.likelihood must be one of bernoulli, gaussian"),
    ("train.epochs=0", "train.epochs must be a positive integer"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("data.binarize=yes", "data.binarize must be one of"),
    ("data.download=maybe", "data.download must be true or false"),
    ("model.conv_channels=[32, -1]", "conv_channels"),
    ("data.channels=2", "data.channels must be 1 or 3"),
    ("train.device=tpu", "train.device"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nlatent = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key model.latent in .*c.toml"):
        load_config(path)
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_toml_and_dict_round_trip(tmp_path):
    cfg = load_config(overrides=["model.conv_channels=[8, 16]", "data.max_train=100", "train.beta=0.5"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_written_toml_is_valid_for_any_folder_name(tmp_path):
    # quotes, backslashes, control characters, non-ASCII and astral characters all survive the round trip
    cfg = load_config().replace(data={"dataset": 'folder:/tmp/a "b"\\c\td\x7fé😀', "data_dir": "ü"})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(path) == cfg


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError):
        ModelConfig(kind="gan")  # type: ignore[arg-type]
    assert DataConfig(image_size=None).image_size is None
    assert ModelConfig(conv_channels=[8, 8]).conv_channels == (8, 8)  # type: ignore[arg-type]


def test_name_at_dir_sets_the_data_directory():
    """`data.dataset = "mnist@DIR"`, the spelling `--on` takes, trains on mnist from DIR."""
    cfg = load_config(overrides=["data.dataset=mnist@../shared/data/mnist-10k"])
    assert (cfg.data.dataset, cfg.data.data_dir) == ("mnist", "../shared/data/mnist-10k")
    assert from_dict(to_dict(cfg)) == cfg  # what the run writes reads back the same
    with pytest.raises(ConfigError, match="no other data.data_dir"):  # both in one place (a TOML [data] table)
        DataConfig(dataset="mnist@/a", data_dir="/b")
    with pytest.raises(ConfigError, match="directory after @"):
        load_config(overrides=["data.dataset=mnist@"])
    assert load_config(overrides=["data.dataset=folder:/x@y"]).data.dataset == "folder:/x@y"  # a path may hold @
