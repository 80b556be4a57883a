import os

import numpy as np
import torch


def test_every_digit_is_recognised():
    """Each digit's recall is at least 0.7: a model can be accurate overall and still miss one digit."""
    model = torch.load(os.environ["MODEL_PATH"], weights_only=False)
    data = np.load(os.environ["TEST_DATA"])
    with torch.no_grad():
        pred = model(torch.from_numpy(data["X"])).argmax(1).numpy()
    recall = {int(c): float((pred[data["y"] == c] == c).mean()) for c in np.unique(data["y"])}
    assert min(recall.values()) >= 0.7, recall
