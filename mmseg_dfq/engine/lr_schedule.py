"""The DFQ authors' poly learning-rate decay, one iteration behind."""

from mmengine.optim.scheduler import PolyLR
from mmseg.registry import PARAM_SCHEDULERS


@PARAM_SCHEDULERS.register_module()
class LaggedPolyLR(PolyLR):
    """Poly decay whose iteration k runs at the value of iteration k - 1.

    The DFQ authors' ``train_feed.py`` sets the learning rate after
    ``optimizer.step()`` from the index of the iteration just finished:
    ``lr = base * (1 - k / T) ** 0.9`` for T iterations, used by iteration
    k + 1. Iterations 0 and 1 both run at ``base``, iteration k >= 1 at
    ``base * (1 - (k - 1) / T) ** power``, and the last one at
    ``base * (2 / T) ** power``: the rate never reaches 0. mmengine's
    ``PolyLR`` runs iteration k at ``base * (1 - k / (T - 1)) ** power``,
    ending at exactly ``eta_min``. Over a 10,600-iteration schedule the
    two differ by at most 0.045% of the base rate; relative to the rate
    itself, by more than 1% only in the last 177 iterations.

    Same arguments as ``PolyLR`` (epoch-based ones are converted to
    iterations as usual, ``convert_to_iter_based=True``); T is
    ``end - begin`` steps. Values come from a closed form of the step
    count, so resuming gives the uninterrupted run's rates.

    Args:
        *args: :class:`mmengine.optim.PolyLR` arguments.
        **kwargs: :class:`mmengine.optim.PolyLR` arguments.
    """

    def _get_value(self):
        """The rate of the step about to run, from the step count."""
        k = self._global_step - self.begin
        total = self.end - self.begin
        done = max(k - 1, 0)
        return [
            (base - self.eta_min) * (1 - done / total) ** self.power
            + self.eta_min
            for base in self.base_values
        ]
