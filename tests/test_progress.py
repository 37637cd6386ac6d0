"""Off a terminal, library progress bars and transformers' load reports stay out of the log."""

import logging

import datasets
import pytest
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as transformers_logging

from rm_exps import progress
from rm_exps.data.local import save_atomically
from rm_exps.models import load_model, load_tokenizer

BAR_TEXT = ("Loading weights", "%|", "Saving the dataset", "Map")


@pytest.fixture
def bars_on():
    """Library bars and load reports as a fresh process has them; quiet again afterwards."""
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    report_logger = transformers_logging.get_logger("transformers.modeling_utils")
    report_logger.removeFilter(progress._not_a_load_report)
    yield
    progress.quiet_library_output()


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """Messages of transformers' loggers (its own stderr handler keeps a stream capfd does not see)."""
    records, library_logger = Records(), logging.getLogger("transformers")
    library_logger.addHandler(records)
    yield records.messages
    library_logger.removeHandler(records)


def load_map_and_save(tmp_path):
    tokenizer = load_tokenizer("tiny-random-llama")
    load_model("tiny-random-llama", AutoModelForSequenceClassification, tokenizer, num_labels=1)  # score: a load report
    ds = datasets.Dataset.from_dict({"prompt": ["p"] * 4, "chosen": ["c"] * 4, "rejected": ["r"] * 4})
    dd = datasets.DatasetDict({"train": ds.map(lambda row: {"chosen": row["chosen"] + "!"})})
    save_atomically(dd, tmp_path / "saved", {"name": "test"})


def test_no_library_bars_or_load_reports_off_a_terminal(bars_on, transformers_log, tmp_path, capfd):
    load_map_and_save(tmp_path)
    err = capfd.readouterr().err
    assert not [text for text in BAR_TEXT if text in err], err
    assert not [m for m in transformers_log if "LOAD REPORT" in m]


def test_a_terminal_keeps_the_library_bars(bars_on, transformers_log, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda stream=None: True)
    load_map_and_save(tmp_path)
    err = capfd.readouterr().err
    assert "Loading weights" in err and "Map" in err and "Saving the dataset" in err
    assert [m for m in transformers_log if "LOAD REPORT" in m]


def test_bars_without_a_switch_are_hidden_off_a_terminal(capfd):
    from tqdm.auto import tqdm

    log = logging.getLogger("rm_exps.test_progress")
    handler = logging.StreamHandler()  # made before the block: keeps the real stderr
    log.addHandler(handler)
    try:
        with progress.library_bars_hidden():
            list(tqdm(range(3), desc="Converting"))
            log.warning("still logged")
    finally:
        log.removeHandler(handler)
    err = capfd.readouterr().err
    assert "Converting" not in err and "still logged" in err
