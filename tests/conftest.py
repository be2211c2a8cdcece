import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def compose(tmp_path):
    """Compose the real config tree with overrides; results go to a temp folder, W&B off unless asked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bench.config import CONF_DIR, register_resolvers

    register_resolvers()

    def _compose(*overrides: str):
        base = [f"paths.results_dir={tmp_path / 'results'}", "logger=none", "trainer=smoke", "model=tiny-bert"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=base + list(overrides))

    return _compose
