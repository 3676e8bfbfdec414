"""Checkpoints written by an older sidrec still load and recommend as they did, and a
seed still trains the same model (tests/legacy_checkpoints.py wrote the files).

A trained model outlives the code that trained it: its `model.safetensors` and the model
config in its `config.json` must load after the model's code is reorganised, and give
the recommendations they gave. The same seed must also draw the same initial weights and
train through the same losses, so the published tables stay reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from legacy_checkpoints import SETTINGS, build, read, read_inputs, recommendations, train_steps

from sidrec.checkpoint import _with_tied_names


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The files were written with one CPU thread; a float sum may round differently
    with another number of threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_stored_model_loads_and_recommends_as_before(name: str) -> None:
    record, weights = read(name)
    inputs = read_inputs()
    model = build(record["model"], record["model_config"], inputs)
    model.load_state_dict(_with_tied_names(model, weights))
    got, want = recommendations(model, inputs), record["recommendations"]
    assert got.keys() == want.keys()
    for label in want:
        assert got[label]["items"] == want[label]["items"], label
        # Scores to float32 rounding, not bit for bit: a batched dot product rounds by the
        # shape of the product it is part of (COBRA's cosines, once padded to the largest
        # group, are now computed on its beams' groups alone; 1.8e-7 apart at most).
        torch.testing.assert_close(torch.tensor(got[label]["scores"]),
                                   torch.tensor(want[label]["scores"]), rtol=1e-5, atol=1e-6,
                                   msg=label)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_same_seed_draws_the_same_weights_and_trains_through_the_same_losses(
        name: str) -> None:
    record, weights = read(name)
    inputs = read_inputs()
    torch.manual_seed(0)
    model = build(record["model"], record["model_config"], inputs)
    assert train_steps(model, inputs) == record["losses"]
    stored = build(record["model"], record["model_config"], inputs)
    stored.load_state_dict(_with_tied_names(stored, weights))
    trained = model.state_dict()
    assert list(trained) == list(stored.state_dict())
    for key, value in stored.state_dict().items():
        assert torch.equal(trained[key], value), key


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_parameters_keep_their_order(name: str) -> None:
    """An optimiser's state in a resume checkpoint (`last.safetensors`) is stored by each
    parameter's position, so a training interrupted under the older code resumes only if
    every position still holds the parameter it held then (renamed or not)."""
    record, weights = read(name)
    model = build(record["model"], record["model_config"], read_inputs())
    model.load_state_dict(_with_tied_names(model, weights))
    old = _with_tied_names(model, weights)
    params = list(model.parameters())
    assert len(params) == len(record["parameters"])
    for (old_name, _), param in zip(record["parameters"], params, strict=True):
        assert torch.equal(param.detach(), old[old_name]), old_name
