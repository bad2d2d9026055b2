"""Training resource: LoRA fine-tuning with peft on the configured device."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import dagster as dg

from srlm.config import Train


class TrainingResource(dg.ConfigurableResource):
    device: str = "auto"
    dtype: str = "auto"

    def train(
        self,
        base_model: str,
        examples: Sequence[tuple[str, str]],
        out_dir: str,
        settings: Train,
        seed: int,
        init_adapter: Optional[str] = None,
        log: Optional[Callable[[str], None]] = None,
    ):
        """Train a LoRA adapter on (prompt, completion) pairs; returns srlm.training.TrainReport."""
        from srlm.training import LoraSettings, TrainSettings, train_lora

        lora = LoraSettings(**settings.lora.model_dump())
        train_settings = TrainSettings(
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
            grad_accum=settings.grad_accum,
            max_length=settings.max_length,
            warmup_ratio=settings.warmup_ratio,
            seed=seed,
            device=self.device,
            dtype=self.dtype,
        )
        return train_lora(base_model, examples, out_dir, lora, train_settings, init_adapter=init_adapter, log=log)
