"""Intake writes `complaint.received` from the submission's JSON values as they are (see
`handlers.received_data`): that holds only while ReceivedData lists SubmittedData's fields,
in their order, after the complaint's own (channel moved before external_id)."""

from __future__ import annotations

from shared.events import ReceivedData, SubmittedData


def test_received_data_lists_the_submissions_fields_in_their_order():
    submitted = [name for name in SubmittedData.model_fields if name != "channel"]
    assert list(ReceivedData.model_fields) == [
        "complaint_id",
        "actor",
        "received_at",
        "channel",
        *submitted,
    ]
