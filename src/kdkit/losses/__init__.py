"""Pure loss math (no I/O, no models): public API. Shapes are documented on each function."""

from kdkit.losses.kd import hidden_mse, kd_loss, kd_mse_loss, soft_kl

__all__ = ["hidden_mse", "kd_loss", "kd_mse_loss", "soft_kl"]
