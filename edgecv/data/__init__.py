from edgecv.data.datasets import DataBundle, load_eval_dataset, load_train_val
from edgecv.data.preprocess import Preprocess

__all__ = ["DataBundle", "Preprocess", "load_eval_dataset", "load_train_val"]
