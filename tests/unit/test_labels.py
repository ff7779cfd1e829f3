"""Learning that a model's labels output is one fixed class list, and the predictor's use of it."""

import numpy as np

from bridge.model.labels import FixedLabels
from tests.unit.test_predictor import FakeClient, image, predictor

CLASSES = np.array([b"cat", b"dog", b"owl"], dtype=object)
UNSORTED = np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]], dtype=np.float32)


def fixed(rows=2):
    return np.array([CLASSES] * rows, dtype=object)


def test_labels_are_learnt_after_three_confirming_answers_of_two_or_more_images():
    labels = FixedLabels(confirmations=3)
    for _ in range(2):
        labels.observe(1, fixed(), UNSORTED)
        assert labels.wanted() and labels.row(1) is None
    labels.observe(1, fixed(), UNSORTED)
    assert not labels.wanted()
    assert list(labels.row(1)) == list(CLASSES)
    assert labels.row(2) is None  # another version is not known


def test_answers_of_one_image_never_confirm():
    labels = FixedLabels(confirmations=1)
    for _ in range(10):
        labels.observe(1, fixed(1), UNSORTED[:1])
    assert labels.wanted() and labels.row(1) is None


def test_labels_in_score_order_are_never_learnt():
    labels = FixedLabels(confirmations=1)
    top_k_scores = np.sort(UNSORTED, axis=1)[:, ::-1]  # a top-k model: every row descending
    for _ in range(5):
        labels.observe(1, fixed(), top_k_scores)
    assert labels.wanted() and labels.row(1) is None


def test_rows_that_differ_mean_labels_are_fetched_for_good():
    labels = FixedLabels(confirmations=1)
    labels.observe(1, np.array([CLASSES, CLASSES[::-1]], dtype=object), UNSORTED)
    labels.observe(1, fixed(), UNSORTED)
    assert labels.follow_input and labels.wanted() and labels.row(1) is None


def test_a_recheck_that_contradicts_what_was_learnt_unlearns_it():
    labels = FixedLabels(confirmations=1, recheck_every=4)
    labels.observe(1, fixed(), UNSORTED)
    asked = [labels.wanted() for _ in range(8)]
    assert asked == [False, False, False, True] * 2
    labels.observe(1, np.array([CLASSES[::-1]] * 2, dtype=object), UNSORTED)
    assert labels.row(1) is None and all(labels.wanted() for _ in range(5))


def two_images():
    return [image(1), image(2)]


def test_the_predictor_stops_fetching_labels_once_learnt_and_still_labels_every_image():
    client = FakeClient()
    model = predictor(client)
    answers = [model.predict(two_images()) for _ in range(5)]
    assert client.label_calls == [True, True, True, False, False]
    for outcomes in answers:
        assert [outcome.predictions[0].label for outcome in outcomes] == ["one", "two"]


def test_a_new_model_version_is_asked_for_its_labels_again():
    client = FakeClient()
    model = predictor(client)
    for _ in range(3):
        model.predict(two_images())
    client.version = 5  # the server loaded a new version
    outcomes = model.predict(two_images())
    assert client.label_calls[3:] == [False, True]  # the answer of version 5 had no labels: asked again
    assert [outcome.predictions[0].label for outcome in outcomes] == ["one", "two"]
    assert {outcome.model_version for outcome in outcomes} == {5}
