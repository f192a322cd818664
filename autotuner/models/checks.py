"""A spec's model checked before anything is measured: its source loads, and its content
hashes (models.identity) are found, which every trial's artifacts are keyed on."""

from __future__ import annotations

from autotuner.models.dataset import forget_factory_reads
from autotuner.models.identity import with_digests
from autotuner.models.sources import check_source
from autotuner.spec.fields import FieldError
from autotuner.spec.loading import field_error
from autotuner.spec.schema import Spec


def checked_model(spec: Spec, source: str = "<spec>") -> Spec:
    """The spec with its model's and data's digests, or SpecError (exit 2, naming `source`) when
    the model's source cannot be loaded (a factory that is not there or raises, an ONNX file that
    is missing or not ONNX): before a study is created, not once per trial."""
    try:
        forget_factory_reads()  # a data factory is called once a command: by the data check below
        check_source(spec)
        return with_digests(spec)
    except FieldError as e:
        raise field_error(source, e) from None
