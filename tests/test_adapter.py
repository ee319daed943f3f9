"""The neonize adapter: real neonize protobufs in, serialized and parsed back as Go delivers them,
our driver events out."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter

from sessions import events
from sessions.events import DriverEvent, WaMessage
from tests.conftest import quiet_neonize_import

quiet_neonize_import()

from neonize.events import QREv  # noqa: E402
from neonize.proto import Neonize_pb2 as neonize_pb  # noqa: E402
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E  # noqa: E402

from sessions import adapter  # noqa: E402
from sessions import wa_proto as wa  # noqa: E402

ME = "5215500000000@s.whatsapp.net"
ALICE = "5215512345678@s.whatsapp.net"
ALICE_LID = "123456789012345@lid"
BOB = "5215587654321@s.whatsapp.net"
GROUP = "120363012345678901@g.us"
T0 = datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
T0_MS = 1767261600123
T0_S = 1767261600
NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)

_WIRE = TypeAdapter(list[DriverEvent])


def over_the_wire(event: Any) -> Any:
    """The event as Go hands it over: serialized (so every required field is there), parsed."""
    return type(event).FromString(event.SerializeToString())


def translate(event: Any, **kwargs: Any) -> list[DriverEvent]:
    """Translate as the worker does, and check the result survives the IPC's JSON unchanged."""
    out = adapter.translate(over_the_wire(event), now=NOW, **kwargs)
    assert _WIRE.validate_json(_WIRE.dump_json(out)) == out
    return out


def receive(message: Any, *, id: str = "3EB0C0FFEE000001", **kwargs: Any) -> WaMessage:
    """One incoming message from Alice, through the adapter."""
    kwargs.setdefault("chat", ALICE)
    kwargs.setdefault("sender", ALICE)
    kwargs.setdefault("push_name", "Alice")
    event = wa.message_event(id=id, message=message, timestamp_ms=T0_MS, **kwargs)
    [out] = translate(event)
    assert isinstance(out, events.MessageReceived)
    json.dumps(out.message.raw)
    return out.message


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- message types -------------------------------------------------------------------------------


def test_text_message_keeps_who_when_and_what() -> None:
    msg = receive(wa.text("hola, ¿cómo estás?"))

    assert msg.type == "text"
    assert msg.text == "hola, ¿cómo estás?"
    assert (msg.id, msg.chat, msg.sender) == ("3EB0C0FFEE000001", ALICE, ALICE)
    assert msg.push_name == "Alice"
    assert not msg.from_me
    assert not msg.is_group
    assert msg.timestamp == T0  # Info.Timestamp is milliseconds
    assert msg.raw == {"conversation": "hola, ¿cómo estás?"}


def test_extended_text_with_link() -> None:
    url = "https://example.com/pricing"
    msg = receive(
        wa.extended_text(f"look {url}", matched_text=url, title="Pricing", description="Plans")
    )

    assert msg.type == "text"
    assert msg.text == f"look {url}"
    assert msg.raw["extendedTextMessage"]["matchedText"] == url


def test_image_carries_caption_media_info_and_download_reference() -> None:
    data = b"\xff\xd8\xff\xe0 a photo of the invoice"
    msg = receive(wa.image(data=data, caption="the invoice", width=1600, height=1200))

    assert msg.type == "image"
    assert msg.text == "the invoice"
    assert msg.media is not None
    assert msg.media.mime_type == "image/jpeg"
    assert msg.media.file_sha256 == sha256_hex(data)
    assert msg.media.file_length == len(data)
    assert (msg.media.width, msg.media.height) == (1600, 1200)
    download = msg.media.download
    assert download["media_type"] == "image"
    assert download["direct_path"].startswith("/v/t62.7118-24/")
    assert download["url"].startswith("https://mmg.whatsapp.net/v/")
    assert len(base64.b64decode(download["media_key"])) == 32
    assert len(base64.b64decode(download["enc_sha256"])) == 32


def test_video() -> None:
    data = b"\x00\x00\x00\x18ftypmp42 a clip"
    msg = receive(wa.video(data=data, caption="the demo", seconds=42, width=1920, height=1080))

    assert msg.type == "video"
    assert msg.text == "the demo"
    assert msg.media is not None
    assert msg.media.duration_seconds == 42
    assert (msg.media.width, msg.media.height) == (1920, 1080)
    assert msg.media.file_sha256 == sha256_hex(data)
    assert msg.media.download["media_type"] == "video"


def test_audio_file() -> None:
    msg = receive(wa.audio(seconds=185))

    assert msg.type == "audio"
    assert msg.media is not None
    assert msg.media.mime_type == "audio/mpeg"
    assert msg.media.duration_seconds == 185


def test_voice_note_is_audio_with_ptt() -> None:
    msg = receive(wa.voice_note(seconds=9))

    assert msg.type == "voice"
    assert msg.media is not None
    assert msg.media.mime_type == "audio/ogg; codecs=opus"
    assert msg.media.duration_seconds == 9


def test_document_keeps_its_filename() -> None:
    data = b"%PDF-1.7 quarterly report"
    msg = receive(wa.document(filename="Q3 report.pdf", data=data))

    assert msg.type == "document"
    assert msg.media is not None
    assert msg.media.filename == "Q3 report.pdf"
    assert msg.media.mime_type == "application/pdf"
    assert msg.media.file_sha256 == sha256_hex(data)
    assert msg.text is None


@pytest.mark.parametrize("go_unwraps", [True, False])
def test_document_with_caption_is_unwrapped(go_unwraps: bool) -> None:
    doc = wa.document(
        filename="contract.docx", caption="please sign", mimetype="application/msword"
    )
    msg = receive(wa.document_with_caption(doc), unwrap_message=go_unwraps)

    assert msg.type == "document"
    assert msg.text == "please sign"
    assert msg.media is not None
    assert msg.media.filename == "contract.docx"


def test_sticker() -> None:
    msg = receive(wa.sticker(animated=True))

    assert msg.type == "sticker"
    assert msg.media is not None
    assert msg.media.mime_type == "image/webp"
    assert msg.media.download["media_type"] == "sticker"


def test_location() -> None:
    msg = receive(
        wa.location(
            19.432608,
            -99.133209,
            name="Zócalo",
            address="Plaza de la Constitución, CDMX",
            url="https://maps.example/zocalo",
        )
    )

    assert msg.type == "location"
    assert msg.location == events.Location(
        latitude=19.432608,
        longitude=-99.133209,
        name="Zócalo",
        address="Plaza de la Constitución, CDMX",
        url="https://maps.example/zocalo",
    )


def test_live_location() -> None:
    msg = receive(wa.live_location(20.6597, -103.3496, caption="on my way"))

    assert msg.type == "live_location"
    assert msg.text == "on my way"
    assert msg.location is not None
    assert (msg.location.latitude, msg.location.longitude) == (20.6597, -103.3496)


def test_contact_card() -> None:
    msg = receive(wa.contact("Dr. Ruiz", "+52 55 1111 2222"))

    assert msg.type == "contact"
    [card] = msg.contacts
    assert card.display_name == "Dr. Ruiz"
    assert "FN:Dr. Ruiz" in card.vcard
    assert "waid=525511112222:+525511112222" in card.vcard


def test_several_contacts() -> None:
    msg = receive(wa.contacts([("Ana", "+52 55 3333 4444"), ("Luis", "+52 55 5555 6666")]))

    assert msg.type == "contacts"
    assert [c.display_name for c in msg.contacts] == ["Ana", "Luis"]
    assert "waid=525555556666" in msg.contacts[1].vcard


@pytest.mark.parametrize(
    ("selectable", "expected"),
    [(1, 1), (2, 2), (0, 3)],  # 0 = any number of the 3 options
)
def test_poll(selectable: int, expected: int) -> None:
    msg = receive(wa.poll("Lunch?", ["tacos", "sushi", "pizza"], selectable_count=selectable))

    assert msg.type == "poll"
    assert msg.text == "Lunch?"
    assert msg.poll == events.Poll(
        name="Lunch?", options=["tacos", "sushi", "pizza"], selectable_count=expected
    )


def test_poll_vote_points_at_the_poll_and_takes_the_decrypted_choice() -> None:
    vote = wa.poll_vote("3EB0POLL", chat=ALICE, poll_from_me=True, selected=["sushi"])
    msg = receive(vote)

    assert msg.type == "poll_vote"
    assert msg.target_id == "3EB0POLL"
    assert msg.poll_vote_hashes == []  # encrypted: only the worker's client can decrypt it

    decrypted = adapter.with_poll_vote(msg, wa.read_fake_poll_vote(vote.pollUpdateMessage))
    assert decrypted.poll_vote_hashes == [sha256_hex(b"sushi")]


def test_reaction() -> None:
    msg = receive(wa.reaction("3EB0TARGET", "👍", chat=ALICE, target_from_me=True))

    assert msg.type == "reaction"
    assert msg.target_id == "3EB0TARGET"
    assert msg.emoji == "👍"


def test_reaction_removed() -> None:
    msg = receive(wa.reaction("3EB0TARGET", "", chat=ALICE, target_from_me=True))

    assert msg.type == "reaction"
    assert msg.target_id == "3EB0TARGET"
    assert msg.emoji == ""


@pytest.mark.parametrize(
    ("content", "expected_type"),
    [(wa.text("yes, confirmed"), "text"), (wa.image(caption="this one"), "image")],
)
def test_reply_names_the_quoted_message(content: Any, expected_type: str) -> None:
    quoted = wa.text("can you confirm?")
    message = wa.reply(content, quoted_id="3EB0QUOTED", quoted_sender=ME, quoted_message=quoted)
    msg = receive(message)

    assert msg.type == expected_type
    assert msg.quoted_id == "3EB0QUOTED"
    assert msg.quoted_sender == ME


def test_reply_in_a_group_names_the_participant_without_device() -> None:
    message = wa.reply(
        wa.text("agreed"), quoted_id="3EB0Q", quoted_sender="5215587654321:7@s.whatsapp.net"
    )
    msg = receive(message, chat=GROUP, sender=ALICE)

    assert msg.quoted_sender == BOB


@pytest.mark.parametrize("go_unwraps", [True, False])
def test_edit_names_target_and_new_text(go_unwraps: bool) -> None:
    message = wa.edit(
        "3EB0ORIGINAL", wa.text("see you at 6, not 5"), chat=ALICE, timestamp_ms=T0_MS
    )
    msg = receive(message, sender=ME, from_me=True, edit=wa.EDIT_MESSAGE, unwrap_message=go_unwraps)

    assert msg.type == "edit"
    assert msg.target_id == "3EB0ORIGINAL"
    assert msg.text == "see you at 6, not 5"
    assert msg.from_me


def test_edit_of_a_caption() -> None:
    message = wa.edit("3EB0PHOTO", wa.image(caption="better caption"), chat=ALICE)
    msg = receive(message, edit=wa.EDIT_MESSAGE)

    assert (msg.type, msg.target_id, msg.text) == ("edit", "3EB0PHOTO", "better caption")


def test_edit_attribute_alone_marks_an_edit() -> None:
    msg = receive(wa.text("fixed typo"), edit=wa.EDIT_MESSAGE)

    assert msg.type == "edit"
    assert msg.text == "fixed typo"
    assert msg.target_id is None


def test_revoke_names_its_target() -> None:
    message = wa.revoke("3EB0OOPS", chat=GROUP, target_sender=ALICE)
    msg = receive(message, chat=GROUP, sender=ALICE, edit=wa.EDIT_SENDER_REVOKE)

    assert msg.type == "revoke"
    assert msg.target_id == "3EB0OOPS"
    assert msg.is_group


@pytest.mark.parametrize("go_unwraps", [True, False])
def test_view_once(go_unwraps: bool) -> None:
    msg = receive(wa.view_once(wa.image(caption="just once")), unwrap_message=go_unwraps)

    assert msg.type == "image"
    assert msg.text == "just once"
    assert msg.view_once


@pytest.mark.parametrize("go_unwraps", [True, False])
def test_ephemeral(go_unwraps: bool) -> None:
    msg = receive(wa.ephemeral(wa.text("gone in a week")), unwrap_message=go_unwraps)

    assert msg.type == "text"
    assert msg.text == "gone in a week"
    assert msg.ephemeral


def test_forwarded() -> None:
    msg = receive(wa.forwarded(wa.text("chain message")))

    assert msg.forwarded
    assert msg.text == "chain message"


def test_my_own_message_sent_from_the_phone() -> None:
    message = wa.device_sent(wa.text("sent from my phone"), destination=ALICE)
    msg = receive(message, sender=ME, from_me=True, unwrap_message=False)

    assert msg.type == "text"
    assert msg.text == "sent from my phone"
    assert msg.from_me
    assert msg.sender == ME


def test_unknown_message_type_is_kept_as_unsupported_with_raw() -> None:
    msg = receive(wa.unknown("Team lunch"))

    assert msg.type == "unsupported"
    assert msg.raw["eventMessage"]["name"] == "Team lunch"
    assert msg.timestamp == T0


def test_empty_message_is_unsupported_not_dropped() -> None:
    msg = receive(waE2E.Message())

    assert msg.type == "unsupported"
    assert msg.raw == {}


@pytest.mark.parametrize(
    "message",
    [
        wa.protocol_notice("APP_STATE_SYNC_KEY_SHARE"),
        wa.protocol_notice("HISTORY_SYNC_NOTIFICATION"),
        wa.sender_key_distribution(GROUP),
    ],
)
def test_device_housekeeping_is_not_a_chat_message(message: Any) -> None:
    event = wa.message_event(
        id="3EB0KEYS", chat=ME, sender=ME, from_me=True, message=message, timestamp_ms=T0_MS
    )

    assert translate(event) == []


def test_other_protocol_messages_are_kept_as_unsupported() -> None:
    msg = receive(wa.protocol_notice("EPHEMERAL_SETTING"))

    assert msg.type == "unsupported"
    assert msg.raw["protocolMessage"]["type"] == "EPHEMERAL_SETTING"


# -- addressing: groups, LIDs, phone numbers ------------------------------------------------------


def test_group_message_from_a_lid_participant() -> None:
    msg = receive(wa.text("hi all"), chat=GROUP, sender="123456789012345:4@lid", sender_alt=ALICE)

    assert msg.is_group
    assert msg.chat == GROUP
    assert msg.sender == ALICE_LID  # device dropped
    assert msg.sender_alt == ALICE
    assert msg.chat_alt is None


def test_one_to_one_lid_chat_gets_the_phone_number_as_alt() -> None:
    msg = receive(wa.text("hi"), chat=ALICE_LID, sender=ALICE_LID, sender_alt=ALICE)

    assert (msg.chat, msg.chat_alt) == (ALICE_LID, ALICE)
    assert (msg.sender, msg.sender_alt) == (ALICE_LID, ALICE)


def test_my_message_to_a_lid_chat_takes_the_recipient_alt() -> None:
    msg = receive(wa.text("hello"), chat=ALICE_LID, sender=ME, from_me=True, recipient_alt=ALICE)

    assert (msg.chat, msg.chat_alt) == (ALICE_LID, ALICE)
    assert msg.sender_alt is None


# -- receipts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "from_me", "expected"),
    [
        ("DELIVERED", False, "delivered"),
        ("READ", False, "read"),
        ("PLAYED", False, "played"),
        ("READ_SELF", True, "read"),
        ("SERVER_ERROR", True, "played"),  # neonize's encoding of whatsmeow's "played-self"
        ("RETRY", False, "retry"),
        ("INACTIVE", False, "other"),
    ],
)
def test_receipt(kind: str, from_me: bool, expected: events.ReceiptKind) -> None:
    event = wa.receipt_event(
        chat=ALICE,
        sender="5215512345678:2@s.whatsapp.net",
        message_ids=["3EB0A", "3EB0B"],
        timestamp_s=T0_S,
        type=kind,
        from_me=from_me,
    )

    assert translate(event) == [
        events.Receipt(
            chat=ALICE,
            sender=ALICE,
            message_ids=["3EB0A", "3EB0B"],
            type=expected,
            timestamp=datetime(2026, 1, 1, 10, tzinfo=UTC),  # Timestamp is seconds
            from_me=from_me,
        )
    ]


def test_receipt_in_a_group_names_the_reader() -> None:
    event = wa.receipt_event(chat=GROUP, sender=BOB, message_ids=["3EB0G"], timestamp_s=T0_S)
    [receipt] = translate(event)

    assert isinstance(receipt, events.Receipt)
    assert (receipt.chat, receipt.sender, receipt.type) == (GROUP, BOB, "read")


# -- connection, pairing, presence -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (wa.connected_event(), events.Connected(jid=ME)),
        (wa.disconnected_event(), events.Disconnected()),
        (wa.stream_replaced_event(), events.StreamReplaced()),
        (
            wa.logged_out_event(reason="MAIN_DEVICE_GONE", on_connect=True),
            events.LoggedOut(reason="main_device_gone", on_connect=True),
        ),
        (
            wa.temporary_ban_event(code="BLOCKED_BY_USERS", expire_s=3600),
            events.TemporaryBan(
                code=102, expires_at=NOW + timedelta(hours=1), reason="blocked_by_users"
            ),
        ),
        (wa.keepalive_timeout_event(error_count=3), events.KeepAliveTimeout(error_count=3)),
        (
            wa.connect_failure_event(reason="SERVICE_UNAVAILABLE", message="try later"),
            events.ConnectFailure(reason="service_unavailable: try later", transient=True),
        ),
        (
            wa.connect_failure_event(reason="CLIENT_OUTDATED"),
            events.ConnectFailure(reason="client_outdated", transient=False),
        ),
        (
            wa.pair_status_event(wa.jid("5215500000000", device=31), business_name="Acme"),
            events.PairSuccess(jid=ME, business_name="Acme", platform="android"),
        ),
        (
            wa.pair_status_event(wa.empty_jid(), error="pairing rejected by phone"),
            events.PairFailure(jid=None, error="pairing rejected by phone"),
        ),
        (
            wa.presence_event(ALICE, available=False, last_seen_s=T0_S),
            events.Presence(
                jid=ALICE, available=False, last_seen=datetime(2026, 1, 1, 10, tzinfo=UTC)
            ),
        ),
        (
            # Go sends the zero time's Unix() when last seen is hidden
            wa.presence_event(ALICE, available=True, last_seen_s=-62135596800),
            events.Presence(jid=ALICE, available=True, last_seen=None),
        ),
        (
            wa.chat_presence_event(chat=ALICE, sender=ALICE, state="composing"),
            events.ChatPresence(chat=ALICE, sender=ALICE, state="composing"),
        ),
        (
            wa.chat_presence_event(chat=GROUP, sender=BOB, state="recording"),
            events.ChatPresence(chat=GROUP, sender=BOB, state="recording"),
        ),
        (
            wa.chat_presence_event(chat=ALICE, sender=ALICE, state="paused"),
            events.ChatPresence(chat=ALICE, sender=ALICE, state="paused"),
        ),
    ],
    ids=lambda v: type(v).__name__,
)
def test_lifecycle_and_presence_events(event: Any, expected: DriverEvent) -> None:
    assert translate(event, own_jid=ME) == [expected]


def test_events_we_do_not_use_translate_to_nothing() -> None:
    assert translate(QREv(Codes=["2@abc,def,ghi,jkl"])) == []


# -- history sync -------------------------------------------------------------------------------


def test_history_sync_chunk() -> None:
    alice_chat = wa.history_conversation(
        ALICE_LID,
        [
            wa.web_message(
                id="H3", chat=ALICE_LID, message=wa.image(caption="menu"), timestamp_s=T0_S + 120
            ),
            wa.web_message(
                id="H2",
                chat=ALICE_LID,
                message=wa.text("thanks!"),
                timestamp_s=T0_S + 60,
                from_me=True,
            ),
            wa.web_message(
                id="H1", chat=ALICE_LID, message=wa.text("hi"), timestamp_s=T0_S, push_name="Alice"
            ),
            wa.web_message(
                id="H0",
                chat=ALICE_LID,
                message=None,
                timestamp_s=T0_S - 60,
                stub_type="E2E_ENCRYPTED",
            ),
        ],
        name="Alice",
        unread_count=2,
        pn_jid=ALICE,
    )
    group_chat = wa.history_conversation(
        GROUP,
        [
            wa.web_message(
                id="G1",
                chat=GROUP,
                message=wa.reaction("H9", "🎉", chat=GROUP, target_sender=ALICE),
                participant="5215587654321:2@s.whatsapp.net",
                timestamp_s=T0_S,
            )
        ],
        name="Project",
    )
    event = wa.history_sync_event(
        [alice_chat, group_chat],
        sync_type="RECENT",
        chunk_order=3,
        progress=42,
        pushnames={BOB: "Bob"},
        phone_to_lid={ALICE: ALICE_LID},
    )

    [chunk, *contacts] = translate(event, own_jid=ME)

    assert isinstance(chunk, events.HistoryChunk)
    assert (chunk.sync_type, chunk.chunk_order, chunk.progress) == ("recent", 3, 42)
    alice, group = chunk.conversations
    assert (alice.chat, alice.chat_alt, alice.name, alice.unread_count) == (
        ALICE_LID,
        ALICE,
        "Alice",
        2,
    )
    image, mine, first, stub = alice.messages
    assert (image.id, image.type, image.text, image.sender) == ("H3", "image", "menu", ALICE_LID)
    assert image.media is not None
    assert image.timestamp == datetime(2026, 1, 1, 10, 2, tzinfo=UTC)  # seconds
    assert (mine.text, mine.from_me, mine.sender) == ("thanks!", True, ME)
    assert (first.text, first.push_name, first.chat_alt) == ("hi", "Alice", ALICE)
    assert (stub.type, stub.raw["messageStubType"]) == ("unsupported", "E2E_ENCRYPTED")

    assert (group.chat, group.name) == (GROUP, "Project")
    [reaction] = group.messages
    assert (reaction.type, reaction.target_id, reaction.emoji) == ("reaction", "H9", "🎉")
    assert (reaction.sender, reaction.is_group) == (BOB, True)

    assert contacts == [
        events.ContactUpdate(jid=BOB, phone="5215587654321", push_name="Bob"),
        events.ContactUpdate(jid=ALICE, lid=ALICE_LID, phone="5215512345678"),
    ]


def test_history_edit_and_revoke() -> None:
    conv = wa.history_conversation(
        ALICE,
        [
            wa.web_message(
                id="E1",
                chat=ALICE,
                message=wa.edit("M1", wa.text("edited"), chat=ALICE),
                from_me=True,
                timestamp_s=T0_S,
            ),
            wa.web_message(
                id="R1", chat=ALICE, message=wa.revoke("M2", chat=ALICE), timestamp_s=T0_S
            ),
        ],
    )
    [chunk] = translate(wa.history_sync_event([conv]), own_jid=ME)

    assert isinstance(chunk, events.HistoryChunk)
    edit, revoke = chunk.conversations[0].messages
    assert (edit.type, edit.target_id, edit.text) == ("edit", "M1", "edited")
    assert (revoke.type, revoke.target_id) == ("revoke", "M2")


# -- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [None, "MessageEv", b"\x0a\x03abc", 17, {"Info": {}}])
def test_junk_translates_to_nothing(junk: Any) -> None:
    assert adapter.translate(junk) == []


def test_message_without_id_is_dropped_with_a_log_not_an_exception() -> None:
    event = wa.message_event(
        id="X", chat=ALICE, sender=ALICE, message=wa.text("hi"), timestamp_ms=T0_MS
    )
    event.Info.ClearField("ID")  # Go could not even serialize this; never raise anyway

    assert adapter.translate(event) == []


def test_message_that_breaks_translation_is_kept_as_unsupported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(_message: Any) -> Any:
        raise RuntimeError("a shape we never saw")

    monkeypatch.setattr(adapter, "_classify", broken)

    msg = receive(wa.text("still here"))

    assert msg.type == "unsupported"
    assert (msg.id, msg.chat, msg.timestamp) == ("3EB0C0FFEE000001", ALICE, T0)
    assert msg.raw == {"conversation": "still here"}


def test_missing_timestamp_falls_back_to_now() -> None:
    event = wa.message_event(
        id="X", chat=ALICE, sender=ALICE, message=wa.text("hi"), timestamp_ms=0
    )
    [out] = translate(event)

    assert isinstance(out, events.MessageReceived)
    assert out.message.timestamp == NOW


def test_receipt_without_chat_is_dropped() -> None:
    event = neonize_pb.Receipt(Timestamp=T0_S, Type=neonize_pb.Receipt.READ, MessageIDs=["A"])

    assert adapter.translate(event) == []


def test_history_message_without_id_is_skipped_and_the_rest_kept() -> None:
    good = wa.web_message(id="OK", chat=ALICE, message=wa.text("kept"), timestamp_s=T0_S)
    bad = wa.web_message(id="", chat=ALICE, message=wa.text("lost"), timestamp_s=T0_S)
    [chunk] = translate(wa.history_sync_event([wa.history_conversation(ALICE, [bad, good])]))

    assert isinstance(chunk, events.HistoryChunk)
    assert [m.id for m in chunk.conversations[0].messages] == ["OK"]
