"""DGR, deep generative replay (Shin et al., 2017) as run by the ABD code (§4.7; README "DGR").

Re-implements GT-RIPL/AlwaysBeDreaming-DFCIL:learners/dgr.py::Generative_Replay with models/autoencoder.py's VAE.
The VAE trains online with the classifier on [x; x̂] and is never re-initialised. The reference gives it a second
SGD optimizer with the classifier's settings; here its parameters join the classifier's in the one SGD, which is
the same update (the two losses share no parameters). At t > 0 replay x̂ comes from the scholar (the VAE and
classifier frozen at the end of the previous task), labelled by the scholar's argmax over the old classes:
  CE_w over [x; x̂] (class weights r, 1 - r) + mu · KD(z(x̂), ẑ) over the old classes, and the VAE loss on [x; x̂]
  with the same per-sample weights. Inputs stay in [0, 1] (the VAE ends in a sigmoid).
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from dfcil_core.learners.api import Learner, Task
from dfcil_core.losses import kd_loss, old_new_class_weights, weighted_ce
from dfcil_core.models.vae import VAE
from dfcil_core.sample_grid import save_grid

GRID_SEED = 0


class DGR(Learner):
    name = "dgr"
    state_parts = ("model", "vae")
    normalize_inputs = False  # dataloaders/utils.py: DGR's transforms skip Normalize
    tiny_overrides = {"vae_z_dim": 16, "vae_width": 8}

    def __init__(self, hp, ctx):
        super().__init__(hp, ctx)
        info = ctx.data.info
        self.vae = VAE(info.channels, info.size, hp["vae_z_dim"], hp["vae_width"]).to(ctx.device)
        self.teacher = self.scholar_vae = None

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.index > 0:
            self.teacher, self.scholar_vae = self.frozen_copy(self.model), self.frozen_copy(self.vae)

    def parameters(self):
        return [*self.model.parameters(), *self.vae.parameters()]

    def loss(self, batch):
        self.vae.train()
        if self.teacher is None:
            return {"ce": F.cross_entropy(self.seen_logits(batch.x), batch.y),
                    "vae": self.vae.loss(batch.x, torch.ones_like(batch.x[:, 0, 0, 0]))}
        n_real, n_past = len(batch.y), self.task.n_past_classes
        with torch.no_grad():
            x_replay = self.scholar_vae.sample(n_real)
            z_replay = self.teacher(x_replay)[:, :n_past]
        x, y = torch.cat([batch.x, x_replay]), torch.cat([batch.y, z_replay.argmax(dim=1)])
        weights = old_new_class_weights(n_past, self.task.n_seen_classes, self.ctx.n_classes, x.device)
        logits = self.seen_logits(x)  # (2B, n_seen)
        return {
            "ce": weighted_ce(logits, y, weights),
            "kd": self.hp["mu"] * kd_loss(logits[n_real:, :n_past], z_replay, self.hp["temperature"]),
            "vae": self.vae.loss(x, weights[y]),
        }

    def artifacts(self, out_dir: Path) -> None:
        self.vae.eval()
        save_grid(self.vae.sample(64, generator=torch.Generator(device=self.ctx.device).manual_seed(GRID_SEED)),
                  out_dir / "samples.png")
