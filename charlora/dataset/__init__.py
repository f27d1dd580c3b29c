"""The dataset: Kohya's folder layout, captions, regularisation, buckets, caching and the report."""

from .buckets import BucketChoice, BucketPlanner, make_bucket_resolutions, resize_and_crop
from .cache import LatentCache, cache_refusal
from .folders import Concept, ImageItem, Problem, parse_concept_name, scan_parent
from .loader import BucketBatches, epoch_batches, make_loader
from .plan import DatasetPlan, Sample, build_plan
from .prepare import prepare_dataset
from .report import DatasetError, DatasetReport, check_dataset

__all__ = [
    "BucketChoice", "BucketPlanner", "make_bucket_resolutions", "resize_and_crop", "LatentCache", "cache_refusal",
    "Concept", "ImageItem", "Problem", "parse_concept_name", "scan_parent", "BucketBatches", "epoch_batches",
    "make_loader", "DatasetPlan", "Sample", "build_plan", "prepare_dataset", "DatasetError", "DatasetReport",
    "check_dataset",
]
