"""Training resource: LoRA fine-tuning with peft and accelerate on the configured device(s)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import dagster as dg

from srlm.config import Train


class TrainingResource(dg.ConfigurableResource):
    """Trains with the experiment's `train` section; where (device, dtype) comes from `model`."""

    device: str  # model.device
    dtype: str  # model.dtype

    def train(
        self,
        base_model: str,
        examples: Sequence[tuple[str, str]],
        out_dir: str,
        settings: Train,
        seed: int,
        init_adapter: Optional[str] = None,
        log: Optional[Callable[[str], None]] = None,
        logging_dir: Optional[str] = None,
    ):
        """Train a LoRA adapter on (prompt, completion) pairs; returns srlm.training.TrainReport.

        logging_dir: this run's TensorBoard folder; None: runs/<out_dir name> beside out_dir.
        """
        from srlm.training import TrainSettings, train_lora

        run = TrainSettings.of(settings, seed=seed, device=self.device, dtype=self.dtype, logging_dir=logging_dir)
        return train_lora(base_model, examples, out_dir, settings.lora, run, init_adapter=init_adapter, log=log)
