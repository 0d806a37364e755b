"""Lightning's ``ddp_spawn`` and ``ddp_fork`` (processes started per trainer call): the EMA of
a fit lives in its workers and ends with them, so a later ``test`` ran on the live weights
without a word. The callback now warns, naming the way out (README, Lightning). Run as a
script in a subprocess. The trainers use ``ddp_fork``: the same launcher as ``ddp_spawn``
(the callback tells them apart by it), in a few seconds where each spawned worker imports
torch and Lightning again (30 s for the four trainer calls)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lightning")

SCRIPT = textwrap.dedent(
    """
    import sys, tempfile, torch, lightning.pytorch as pl
    from ema_core.integrations.lightning import EMACallback

    class Reg(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
        def training_step(self, batch, i):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        def validation_step(self, batch, i):
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))
        def test_step(self, batch, i):
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def data():
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
        dataset = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
        return torch.utils.data.DataLoader(dataset, batch_size=8)

    def run(**options):
        ema = EMACallback(decay=0.5, **options)
        trainer = pl.Trainer(
            accelerator="cpu", strategy="ddp_fork", devices=1, max_epochs=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            default_root_dir=tempfile.mkdtemp(), callbacks=[ema],
        )
        model = Reg()
        trainer.fit(model, data(), data())  # its sanity check and validation: no warning
        print("FIT DONE", flush=True)
        trainer.test(model, data(), verbose=False)

    if __name__ == "__main__":
        run()
        print("---- swap-in ----", file=sys.stderr, flush=True)
        run(on_fit_end="swap-in")  # the averages come back as the weights: no warning
        print("DONE")
    """
)


def test_a_test_after_a_forked_fit_warns_that_it_runs_on_the_live_weights(
    tmp_path: Path,
) -> None:
    script = tmp_path / "spawned.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DONE" in out.stdout
    first, swap_in = out.stderr.split("---- swap-in ----")
    assert "EMACallback: test runs on the live weights" in first
    assert "pass ckpt_path=" in first
    assert "EMACallback: validate runs" not in first
    assert "EMACallback:" not in swap_in
