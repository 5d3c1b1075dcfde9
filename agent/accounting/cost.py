"""The cost model: energy cost, hardware cost and carbon of energy and GPU time. Pure.

- Energy cost = kWh x PUE x price per kWh, with kWh = J / 3.6e6.
- Hardware cost = GPU-hours (by share) x the hourly rate of the GPU's model.
- Carbon = kWh x PUE x g CO2e per kWh, only when a carbon intensity is set (> 0).

Each is linear in its input, so the cost of a sum of energy pieces is the sum of their
costs: splitting energy among servers and models keeps the total cost of every GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import PricingSettings

JOULES_PER_KWH = 3.6e6
"""1 kWh = 3.6 MJ."""

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class CostModel:
    """Prices energy and GPU time with the configured settings.

    Attributes:
        pricing: The pricing settings (currency, price per kWh, PUE, hourly rates, carbon).
    """

    pricing: PricingSettings

    @property
    def carbon_enabled(self) -> bool:
        """True when a carbon intensity is configured (> 0 g CO2e/kWh)."""
        return self.pricing.carbon_g_per_kwh > 0

    def facility_kwh(self, joules: float) -> float:
        """Energy at the meter: GPU energy times PUE.

        Args:
            joules: GPU energy, J.

        Returns:
            kWh drawn by the facility for that GPU energy.
        """
        return joules / JOULES_PER_KWH * self.pricing.pue

    def energy_cost(self, joules: float) -> float:
        """Energy cost of GPU energy.

        Args:
            joules: GPU energy, J.

        Returns:
            kWh x PUE x price per kWh, in the configured currency.
        """
        # facility_kwh(joules) * price, written out (run for every model every cycle).
        return joules / JOULES_PER_KWH * self.pricing.pue * self.pricing.electricity_per_kwh

    def carbon_grams(self, joules: float) -> float | None:
        """Carbon emitted for GPU energy.

        Args:
            joules: GPU energy, J.

        Returns:
            kWh x PUE x g CO2e per kWh, g; None when no carbon intensity is configured.
        """
        intensity = self.pricing.carbon_g_per_kwh
        if not intensity > 0:  # carbon_enabled
            return None
        return joules / JOULES_PER_KWH * self.pricing.pue * intensity

    def hourly_rate(self, gpu_name: str) -> float:
        """Hourly rate of a GPU model.

        Args:
            gpu_name: NVML device name.

        Returns:
            Currency per GPU-hour (see :meth:`PricingSettings.hourly_rate`).
        """
        return self.pricing.hourly_rate(gpu_name)

    def hardware_cost(self, gpu_seconds: float, gpu_name: str) -> float:
        """Hardware cost of GPU time.

        Args:
            gpu_seconds: GPU time, s (GPU-hours x 3600, already multiplied by any share).
            gpu_name: NVML device name, to pick the hourly rate.

        Returns:
            GPU-hours x hourly rate, in the configured currency.
        """
        return gpu_seconds / SECONDS_PER_HOUR * self.hourly_rate(gpu_name)
