"""Multinomial logistic regression, fitted by scikit-learn (pipeline.training.train_logreg)
and served as the one linear layer it amounts to."""

from __future__ import annotations

from torch import nn

from pipeline.architectures import register
from pipeline.params import LogReg


@register(LogReg)
def logreg(_candidate: LogReg) -> nn.Sequential:
    """The linear layer whose softmax is scikit-learn's predict_proba: x @ coef.T + b."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
