import pickle

import pytest
import torch

from raylpclip.engine.checkpoint_state import STATE_FILE, load_meta, load_state, save_state


def test_round_trip_keeps_tensors_counters_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    save_state(tmp_path, state={"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7,
                                "generator": gen.get_state()}, meta={"step": 7})
    state = load_state(tmp_path)
    torch.testing.assert_close(state["model"]["weight"], model.weight.detach())
    assert state["step"] == 7 and load_meta(tmp_path) == {"step": 7}
    other = torch.Generator()
    other.set_state(state["generator"])
    assert torch.equal(torch.randn(3, generator=other), torch.randn(3, generator=gen))
    assert not list(tmp_path.glob("*.tmp"))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    with open(tmp_path / STATE_FILE, "wb") as f:
        pickle.dump({"evil": Payload()}, f)
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        load_state(tmp_path)


def test_missing_state_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_state(tmp_path)
