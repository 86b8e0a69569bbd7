"""One pass over the training split: the epoch's data order, its batches, its running sums, and the `last`
checkpoint written inside it (every train.checkpoint_steps / _minutes, and on a stop request) with the order
and position, so that a resumed run continues from that very step."""

from __future__ import annotations

import time
from typing import Any

import torch

from vaelab.data import batches
from vaelab.runs.checkpoint import decode_rng, encode_rng
from vaelab.training.guard import TrainingDiverged
from vaelab.training.schedules import step_kl_weight


def device_read(t: Any) -> None:
    """Read the device-resident path's counters into the trainer's state and act on bad steps as the host
    path does (restore or stop after train.nan_patience in a row)."""
    c = t.device_steps.read()
    st = t.state
    st.step = st.step - t.device_steps.attempted + c.applied
    t.device_steps.attempted = 0
    st.skipped_large += c.large
    st.clipped += c.clipped
    t.bad.total += c.bad
    t.bad.in_a_row = c.in_a_row
    if c.hit:
        t._bad_step(t.bad.act())
        t.device_steps.reset_run()


class EpochRunner:
    """Runs one epoch of `trainer` (a `vaelab.training.loop.Trainer`): order, steps, sums, mid-epoch saves."""

    def __init__(self, trainer: Any) -> None:
        self.t = trainer

    def _order(self) -> None:
        """The epoch's permutation: fresh from the data generator, or the resumed epoch's own (its generator
        state was saved), with the batches done and the sums so far."""
        t = self.t
        n = len(t.train_images)
        p = t.state.position
        gen = t.order_gen  # the data generator, or the device-resident path's generator on its device
        if p is None:  # a fresh epoch: its order comes first from the data generator
            self.order_rng = gen.get_state()
            self.order = torch.randperm(n, generator=gen, device=gen.device)
            self.done, recon_sum, kl_sum, n_images, self.time_before = 0, 0.0, 0.0, 0, 0.0
        else:  # resumed inside the epoch: the same order, and the generator where the checkpoint left it
            self.order_rng = decode_rng(p["order_rng"])
            if p.get("order_on", "cpu") == gen.device.type:
                self.order = torch.randperm(n, generator=torch.Generator(device=gen.device).set_state(self.order_rng),
                                            device=gen.device)
            else:  # drawn on another kind of device: its generator's state means nothing here
                t.log(f"note: this epoch's data order was drawn on {p.get('order_on')}; its remaining batches "
                      f"come in a fresh order drawn on {gen.device.type}")
                self.order_rng = gen.get_state()
                self.order = torch.randperm(n, generator=gen, device=gen.device)
            self.done, n_images, self.time_before = int(p["batches"]), int(p["images"]), float(p["time_s"])
            recon_sum, kl_sum = float(p["recon_sum"]), float(p["kl_sum"])
        where = t.device if t.device_steps is not None else "cpu"  # the device-resident path sums there
        self.recon = torch.tensor(recon_sum, dtype=torch.float64, device=where)
        self.kl = torch.tensor(kl_sum, dtype=torch.float64, device=where)
        self.n_images = torch.tensor(n_images, device=where) if t.device_steps is not None else n_images

    def run(self) -> dict[str, float]:
        t = self.t
        tc = t.cfg.train
        t.model.train()
        n_batches = t.n_batches()
        self.t0 = time.perf_counter()
        large_before = t.state.skipped_large
        self._order()
        t.callbacks.on_epoch_start(t, self.done, n_batches)
        t.signals.stepping = True
        try:
            for x in batches(t.train_data, tc.batch_size, order=self.order[self.done * tc.batch_size:],
                             generator=t.order_gen, dynamic=t.dynamic, device=t.device,
                             memory_format=t.memory_format, shift=t.cfg.data.augment_shift,
                             hflip=t.cfg.data.augment_hflip):
                self._one_batch(x, n_batches)
            if t.device_steps is not None:
                device_read(t)
        finally:
            t.signals.stepping = False
        t.state.position = None
        return self._totals(large_before)

    def _one_batch(self, x: torch.Tensor, n_batches: int) -> None:
        t = self.t
        t.batch_index = self.done + 1
        if t.device_steps is not None:
            return self._device_batch(x, n_batches)
        if t.group.active:  # rank 0's clock decides for everyone, with the step's gradients
            stats = t._step(x, checkpoint_due=t.clock.due(self.done + 1))
        else:
            stats = t._step(x)
        self.done += 1
        if stats is not None:
            self.recon = self.recon + stats.recon.sum().double().cpu()
            self.kl = self.kl + stats.kl.sum().double().cpu()
            self.n_images += len(stats.recon)
        t.callbacks.on_step_end(t, self.done, n_batches, stats)
        if t.group.active:
            due, stop = t._flags  # decided with every process at this step
        else:
            stop = t.signals.requested
            due = bool(stop) or t.clock.due(self.done)
        if self.done < n_batches and (stop or due):
            self._save_position(n_batches)
        if stop and self.done < n_batches:  # on the last batch the epoch ends first, and saves
            raise KeyboardInterrupt(t.signals.requested or "a stop request on another process")

    def _device_batch(self, x: torch.Tensor, n_batches: int) -> None:
        """One step of the device-resident path: sums on the device, counters read every train.sync_steps."""
        t = self.t
        tc = t.cfg.train
        t.state.beta = step_kl_weight(tc, t.step, n_batches)
        stats, ok = t.device_steps.step(x, t._lr(), t.state.beta)
        t.state.step += 1  # attempted; the read below puts the applied count back
        self.done += 1
        self.recon = self.recon + torch.where(ok, stats.recon.sum().double(), 0.0)  # a scalar: no allocation
        self.kl = self.kl + torch.where(ok, stats.kl.sum().double(), 0.0)
        self.n_images = self.n_images + ok.long() * len(stats.recon)
        t.callbacks.on_step_end(t, self.done, n_batches, stats)
        stop = t.signals.requested
        due = bool(stop) or t.clock.due(self.done)
        if t.device_steps.due() or due:
            device_read(t)
        if self.done < n_batches and (stop or due):
            self._save_position(n_batches)
        if stop and self.done < n_batches:
            raise KeyboardInterrupt(t.signals.requested)

    def _save_position(self, n_batches: int) -> None:
        """`last` inside the epoch, with its order, position and sums (over all processes)."""
        t = self.t
        sums = [int(self.n_images), self.recon.item(), self.kl.item()]
        if t.group.active:  # the epoch's sums over all processes, for the checkpoint
            sums = t.group.sum(sums, t.device)
        t.state.position = {"order_rng": encode_rng(self.order_rng), "batches": self.done, "of": n_batches,
                            "images": int(sums[0]), "recon_sum": sums[1], "kl_sum": sums[2],
                            "time_s": self.time_before + time.perf_counter() - self.t0,
                            "order_on": t.order_gen.device.type}
        t.save("last", with_optimizer=True)  # rank 0 into the run, the others into scratch

    def _totals(self, large_before: int) -> dict[str, float]:
        """The epoch's mean terms per image (over all processes) and its time."""
        t = self.t
        n_images, recon_t, kl_t = int(self.n_images), self.recon, self.kl
        if t.group.active:  # the epoch's sums over all processes
            n_images, recon_sum, kl_sum = t.group.sum([n_images, recon_t.item(), kl_t.item()], t.device)
            n_images, recon_t, kl_t = int(n_images), torch.tensor(recon_sum), torch.tensor(kl_sum)
        if n_images == 0:
            why = ("had a gradient norm above train.skip_grad_norm"
                   if t.state.skipped_large - large_before == self.done else "had a NaN or infinite loss or gradient")
            raise TrainingDiverged(f"every step of epoch {t.epoch + 1} {why} and was skipped; "
                                   "lower train.lr, raise train.skip_grad_norm or check the data")
        recon, kl = recon_t.item() / n_images, kl_t.item() / n_images
        beta = t.cfg.train.beta
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl, "images": n_images,
                "time_s": self.time_before + time.perf_counter() - self.t0}


__all__ = ["EpochRunner"]
