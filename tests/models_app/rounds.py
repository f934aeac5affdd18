"""A round of corrections the tiny model learns, for the loop tests that need the gate to decide.

The split follows the item's id (datasets.example_split), and the ids a test gets depend on the tests before
it (PostgreSQL's sequences are not rolled back with a test's transaction), so a fixed count of approvals left
the gate anywhere between 2 and 14 held-out items to decide on, and a candidate with 4 wins and no loss is not
confidently better (p = 0.0625). A round is therefore counted by side.
"""

from annotations import services
from models_app.datasets import HELDOUT, TRAIN, example_split
from tests.factories import ItemFactory

SIGN_OFF = "Best regards, The Brightwater Support Team."
# Every training prompt with examples, as the gate's prompts all carry them: the tiny model learns only the prompt
# shapes it saw. Measured on PostgreSQL over 24 random offsets of the item and example ids, a round of 10 held-out
# and 20 training items: every candidate promoted at this rate (at 0.02, 1 of 21 kept; at 0.01 and 6 epochs, 2 of 16).
LEARN = {
    "epochs": 8,
    "min_steps": 0,
    "learning_rate": 0.04,
    "batch_size": 4,
    "lora_rank": 8,
    "checkpoint_every": 3,
    "retrieval_share": 1.0,
}

# A round's inputs differ only by their number, a word no other example shares, so retrieval.Retriever.nearness calls
# every example far and a fine-tuned version would be shown none: a prompt shape the tiny model never learnt (LEARN
# trains on every prompt with examples). The loop tests show each version the k nearest, as a base version is shown
# them; the floor itself is tested in test_retrieval.py and test_gate.py.
FLOOR = 0.0

# The tiny model's answers to the general prompts are its own random tokens, every one cut at the length limit;
# a round that teaches it a sign-off at the rate above raised its loss on them by 7% to 30% across id offsets
# (8.46 → 10.99 at worst), which says nothing about forgetting in a real model. So the loop tests leave the
# forgetting check out of their decision (it still runs); the check itself is tested in test_gate.py.
REPLAY_TOLERANCE = 10.0


def approve_round(reviewer, domain, *, heldout: int = 10, train: int = 20, final_text: str = SIGN_OFF) -> None:
    """Approves parcel questions with `final_text` until at least `heldout` of them are held out and `train`
    are for training."""
    counts = {HELDOUT: 0, TRAIN: 0}
    n = 0
    while counts[HELDOUT] < heldout or counts[TRAIN] < train:
        ItemFactory(domain=domain, input=f"Customer message {n}: where is my parcel?", draft=f"Draft {n}.")
        claimed = services.item_claim_next(reviewer=reviewer)
        services.review_submit(
            item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=final_text
        )
        counts[example_split(claimed.pk)] += 1
        n += 1
