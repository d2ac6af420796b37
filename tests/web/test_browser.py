"""
The chat page in a real browser (Debian's chromium, driven by Playwright) against a real
2-node cluster with etcd and nsqd, the page served from another origin than the nodes.

Screenshots go to the test's temporary folder (and into $HPCHAT_SCREENSHOTS when set, e.g.
docs/screenshots/).
"""

from __future__ import annotations

import json
import os
import re
import time

from twisted.trial import unittest

from tests.support.browser import Browser, requireBrowser, serveStatic
from tests.support.cluster import TOPIC, Cluster, token
from tests.support.process import waitFor
from tests.support.trial import asyncTest

DESKTOP = {"viewport": {"width": 1180, "height": 760}, "device_scale_factor": 1}
PHONE = {"viewport": {"width": 375, "height": 740}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}
HISTORY = 40            # messages in an older conversation: more than one page (30)
WAIT = 15000            # ms, for anything that should happen within a few lease TTLs


def signIn(page, origin: str, api: str, user: str) -> None:
    page.goto(f"{origin}/?api={api}")
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#app").wait_for(state="visible")


def openChat(page, peer: str) -> None:
    page.get_by_label("Chat with").fill(peer)
    page.get_by_label("Chat with").press("Enter")
    page.locator("#chat-title").filter(has_text=peer).wait_for()


def internalDetails(cluster: Cluster) -> re.Pattern:
    """
    What the page must never show its users: node ids and "via node".
    """
    ids = "|".join(re.escape(n.nodeId) for n in cluster.nodes)
    return re.compile(rf"via node|\b({ids})\b")


def bubbles(page, text: str):
    return page.locator("#message-list .msg:not(.pending):not(.failed) .bubble",
                        has_text=re.compile("^" + re.escape(text) + "$"))


def waitForText(page, text: str, timeout: float = WAIT) -> None:
    """
    C{text} is shown exactly once, as a delivered message.
    """
    from playwright.sync_api import expect

    expect(bubbles(page, text)).to_have_count(1, timeout=timeout)


class BrowserTests(unittest.TestCase):
    timeout = 150

    def setUp(self):
        requireBrowser()

    @asyncTest
    async def test_twoUsersChatAcrossAClusterThatLosesANode(self):
        """
        Alice (desktop) and bob (phone) chat through the page served from another origin: a
        message typed by one appears for the other, exactly once; the typing indicator comes
        and goes; history pages back; a flirt published to nsqd and a profile visit show up as
        notifications; and when the node that owns the conversation (alice's API base) is
        killed, the conversation carries on through the other node.
        """
        started = time.monotonic()
        origin = serveStatic(self)
        cluster = await Cluster(self, size=2, nsq=True, sections={
            "auth": {"dev_login": "true"},
            "http": {"cors_origins": origin},
        }).start()
        cid = "dm:alice:bob"
        owner = await cluster.owner(cid)
        survivor = next(n for n in cluster.nodes if n is not owner)
        for i in range(HISTORY):
            sender = "alice" if i % 3 else "carol"
            status, _, _ = await cluster.client.call(
                "POST", "/v1/conversations/dm:alice:carol/messages", sender,
                {"text": f"old message {i + 1}", "client_id": f"old-{i}"})
            self.assertIn(status, (200, 201))

        async def notified():
            # Carol's messages notify alice through nsqd; all of them before alice's page opens,
            # so that none is taken for a new one.
            status, _, body = await cluster.client.call(
                "GET", "/v1/inbox/events?after=0&timeout=0", "alice")
            return status == 200 and len(body["events"]) == len(range(0, HISTORY, 3))

        await waitFor(notified, 10, "alice's notifications of carol's messages")

        browser = await Browser(self, os.path.abspath(self.mktemp())).start()
        pages = {}

        def open_():
            pages["alice"] = browser.newPage("alice", **DESKTOP)
            pages["bob"] = browser.newPage("bob", **PHONE)
            alice, bob = pages["alice"], pages["bob"]
            # Alice's API base is the node that will die; bob's is the other one.
            alice.goto(f"{origin}/?api={owner.url}")
            alice.get_by_label("User name").fill("alice")
            browser.shot(alice, "01-sign-in")
            alice.get_by_role("button", name="Sign in").click()
            alice.locator("#app").wait_for(state="visible")
            alice.locator('#conn[data-state="live"]').wait_for()
            browser.shot(alice, "02-desktop-signed-in")
            signIn(bob, origin, survivor.url, "bob")

        await browser.run(open_)

        def history():
            from playwright.sync_api import expect

            alice = pages["alice"]
            # The server's list of alice's conversations: carol's is there with one unread
            # message (her last one; alice's own sends moved alice's read marker).
            expect(alice.locator('.contact[data-name="carol"] .unread')).to_have_text(
                "1", timeout=WAIT)
            openChat(alice, "carol")
            waitForText(alice, f"old message {HISTORY}")
            expect(alice.locator("#message-list .bubble")).to_have_count(30)
            alice.get_by_role("button", name="Older messages").click()
            waitForText(alice, "old message 1")
            expect(alice.locator("#message-list .bubble")).to_have_count(HISTORY)
            expect(alice.locator("#beginning")).to_be_visible()
            expect(alice.get_by_role("button", name="Older messages")).to_be_hidden()
            alice.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
            browser.shot(alice, "03-desktop-history")

        await browser.run(history)

        def chat():
            from playwright.sync_api import expect

            alice, bob = pages["alice"], pages["bob"]
            openChat(alice, "bob")
            openChat(bob, "alice")
            box = alice.get_by_label("Message to bob")
            box.press_sequentially("Hi bob! Are we still on for", delay=20)
            expect(bob.locator("#typing")).to_contain_text("alice is typing", timeout=WAIT)
            browser.shot(bob, "04-phone-alice-is-typing")
            box.press_sequentially(" Friday?", delay=20)
            box.press("Enter")
            waitForText(bob, "Hi bob! Are we still on for Friday?")
            expect(bob.locator("#typing")).to_have_text("", timeout=WAIT)
            waitForText(alice, "Hi bob! Are we still on for Friday?")
            # Bob has it on screen, so it is read: alice sees "Seen" under it.
            expect(alice.locator("#message-list .seen")).to_have_count(1, timeout=WAIT)
            expect(alice.locator("#message-list .msg-row", has_text="Friday?")
                   .locator(".seen")).to_have_text("Seen")

            reply = bob.get_by_label("Message to alice")
            reply.fill("Yes! <b>7pm</b> at the usual place & bring the map")
            reply.press("Enter")
            reply.fill("See you there")
            reply.press("Enter")
            waitForText(alice, "Yes! <b>7pm</b> at the usual place & bring the map")
            waitForText(alice, "See you there")
            # User text is shown as text, never parsed as HTML.
            expect(alice.locator("#message-list .bubble b")).to_have_count(0)

            # Typing again shows the indicator on the desktop too, and it goes away when the
            # typist leaves the box.
            reply.press_sequentially("One more thing", delay=20)
            expect(alice.locator("#typing")).to_contain_text("bob is typing", timeout=WAIT)
            browser.shot(alice, "05-desktop-bob-is-typing")
            reply.fill("")
            expect(alice.locator("#typing")).to_have_text("", timeout=WAIT)

        await browser.run(chat)

        await cluster.nsqd.pub(TOPIC, json.dumps({
            "id": "flirt-1", "user": "alice", "type": "flirt", "from": "bob",
            "data": {"hearts": 3}}).encode())
        await cluster.nsqd.pub(TOPIC, json.dumps({
            "id": "visit-1", "user": "bob", "type": "visit", "from": "dora",
            "data": {}}).encode())

        def notifications():
            from playwright.sync_api import expect

            alice, bob = pages["alice"], pages["bob"]
            flirt = alice.locator(".toast", has_text="bob sent you a flirt")
            expect(flirt).to_be_visible(timeout=WAIT)
            expect(alice.locator("#notif-badge")).to_have_text("1")
            visit = bob.locator(".toast", has_text="dora visited your profile")
            expect(visit).to_be_visible(timeout=WAIT)
            browser.shot(bob, "06-phone-visit-notification")
            bob.locator("#notif-button").click()
            expect(bob.locator("#notif-list")).to_contain_text("dora visited your profile")
            browser.shot(bob, "07-phone-notifications")
            bob.get_by_role("button", name="Close").click()
            expect(bob.locator("#notif-panel")).to_be_hidden()
            alice.locator("#notif-button").click()
            expect(alice.locator("#notif-list")).to_contain_text("bob sent you a flirt")
            browser.shot(alice, "08-desktop-notifications")
            alice.keyboard.press("Escape")
            expect(alice.locator("#notif-badge")).to_be_hidden()

        await browser.run(notifications)

        # The node that owns the conversation, and that alice's page was pointed at, dies.
        await owner.kill()
        times = {"killed": time.monotonic()}

        def failover():
            from playwright.sync_api import expect

            alice, bob = pages["alice"], pages["bob"]
            box = alice.get_by_label("Message to bob")
            box.fill("Did the server just die?")
            box.press("Enter")
            # The page says it is reconnecting while the dead node's lease runs out; it may be
            # over before we look, so only a screenshot depends on it.
            try:
                alice.locator('#conn[data-state="retrying"]').wait_for(timeout=3000)
            except Exception:
                pass
            else:
                browser.shot(alice, "09-desktop-reconnecting")
            waitForText(bob, "Did the server just die?", timeout=6 * cluster.leaseTtl * 1000)
            times["delivered"] = time.monotonic()
            reply = bob.get_by_label("Message to alice")
            reply.fill("Nope, still here. Failover works")
            reply.press("Enter")
            waitForText(alice, "Nope, still here. Failover works")
            waitForText(alice, "Did the server just die?")
            expect(alice.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
            # Which node serves the conversation is no business of the user's.
            for page in (alice, bob):
                expect(page.locator("body")).not_to_contain_text(internalDetails(cluster))
            # Nothing was shown twice, on either side.
            for page in (alice, bob):
                for text in ("Hi bob! Are we still on for Friday?", "See you there",
                             "Did the server just die?", "Nope, still here. Failover works"):
                    expect(bubbles(page, text)).to_have_count(1)
            browser.shot(alice, "10-desktop-after-failover")
            browser.shot(bob, "11-phone-after-failover")
            bob.get_by_role("button", name="Back to contacts").click()
            bob.locator("#contacts").wait_for(state="visible")
            browser.shot(bob, "12-phone-contacts")

        await browser.run(failover)
        recovered = times["delivered"] - times["killed"]
        self.assertEqual(browser.errors, [])
        published = browser.publish()
        print(f"\nfailover: a message sent after the kill reached bob {recovered:.1f}s after it; "
              f"test took {time.monotonic() - started:.1f}s; screenshots: {browser.screenshots}"
              + (f" and {os.path.dirname(published[0])}" if published else ""))

    @asyncTest
    async def test_followsRedirectsToTheOwner(self):
        """
        Where the owner accepts the redirected request's origin (here any origin), the page
        follows a 307 from the node it was pointed at to the owner of the conversation, and
        keeps talking to the owner: alice's page is the one a node serves at C{/}, bob's comes
        from another origin, and both point at the node that does not own the conversation.
        """
        origin = serveStatic(self)
        cluster = await Cluster(self, size=2, sections={
            "auth": {"dev_login": "true"},
            "http": {"cors_origins": "*"},
        }).start()
        owner = await cluster.owner("dm:alice:bob")
        other = next(n for n in cluster.nodes if n is not owner)
        browser = await Browser(self, os.path.abspath(self.mktemp())).start()

        def chat():
            from playwright.sync_api import expect

            alice = browser.newPage("alice", **DESKTOP)
            bob = browser.newPage("bob", **PHONE)
            alice.goto(other.url + "/")
            alice.get_by_label("User name").fill("alice")
            alice.get_by_role("button", name="Sign in").click()
            alice.locator("#app").wait_for(state="visible")
            signIn(bob, origin, other.url, "bob")
            openChat(alice, "bob")
            openChat(bob, "alice")
            alice.get_by_label("Message to bob").fill("Hello through a redirect")
            alice.get_by_label("Message to bob").press("Enter")
            waitForText(bob, "Hello through a redirect")
            bob.get_by_label("Message to alice").fill("And back again")
            bob.get_by_label("Message to alice").press("Enter")
            waitForText(alice, "And back again")
            waitForText(bob, "And back again")
            for page in (alice, bob):
                expect(page.locator("body")).not_to_contain_text(internalDetails(cluster))
            return list(browser.log)

        log = await browser.run(chat)
        self.assertEqual(browser.errors, [])
        self.assertTrue([line for line in log if " 307 " in line and "/conversations/" in line],
                        "no redirect was followed")
        self.assertEqual([line for line in log if " failed: " in line], [])
        # Both pages ended up talking to the owner: their last polls (or streams) were
        # answered by it.
        for who in ("alice", "bob"):
            polls = [line for line in log if line.split()[1:2] == [who]
                     and ("/events" in line or "/stream" in line)
                     and "/conversations/" in line and " 200 " in line]
            self.assertTrue(polls, f"{who}'s page got no conversation poll answered")
            self.assertIn(owner.url + "/v1/", polls[-1])


NARROW = {"viewport": {"width": 390, "height": 780}, "device_scale_factor": 2, "is_mobile": True,
          "has_touch": True}


def retryUntilSent(page, text: str, attempts: int = 10) -> None:
    """
    Press "Retry" on the refused message C{text} until it is delivered.
    """
    from playwright.sync_api import expect

    failed = page.locator("#message-list .msg.failed", has_text=text)
    for _ in range(attempts):
        expect(bubbles(page, text).or_(failed)).to_have_count(1, timeout=WAIT)
        if not failed.count():
            waitForText(page, text)
            return
        failed.get_by_role("button", name="Retry").click()
    raise AssertionError(f"{text!r} was still refused after {attempts} attempts")


class SocialTests(unittest.TestCase):
    timeout = 150

    def setUp(self):
        requireBrowser()

    @asyncTest
    async def test_unreadPresenceBlocksAndGroupedNotifications(self):
        """
        Alice (desktop, on one node) and bob (390 px wide, on the other): bob's two messages
        make one notification entry with a count and an unread badge that survives a reload;
        alice sees bob online while his page polls, and "Seen" under hers once he reads it;
        when alice blocks bob his send is refused and says so, and after she unblocks him
        messages flow again. No node ids are shown anywhere.
        """
        origin = serveStatic(self)
        cluster = await Cluster(self, size=2, nsq=True, sections={
            "auth": {"dev_login": "true"},
            "http": {"cors_origins": origin},
        }).start()
        first, second = cluster.nodes
        browser = await Browser(self, os.path.abspath(self.mktemp())).start()
        pages = {}

        def unread():
            from playwright.sync_api import expect

            alice = pages["alice"] = browser.newPage("alice", **DESKTOP)
            bob = pages["bob"] = browser.newPage("bob", **NARROW)
            signIn(alice, origin, first.url, "alice")
            signIn(bob, origin, second.url, "bob")
            openChat(bob, "alice")
            for text in ("Are you there?", "Hello?"):
                bob.get_by_label("Message to alice").fill(text)
                bob.get_by_label("Message to alice").press("Enter")
                waitForText(bob, text)
            badge = alice.locator('.contact[data-name="bob"] .unread')
            expect(badge).to_have_text("2", timeout=WAIT)
            alice.reload()
            alice.locator("#app").wait_for(state="visible")
            expect(badge).to_have_text("2", timeout=WAIT)
            # Two messages of one conversation: one entry, with the count.
            alice.locator("#notif-button").click()
            entries = alice.locator("#notif-list .notif")
            expect(entries).to_have_count(1, timeout=WAIT)
            expect(entries.first).to_contain_text("bob sent you 2 messages")
            expect(entries.first).to_have_attribute("data-count", "2")
            browser.shot(alice, "01-desktop-grouped-notifications")
            alice.keyboard.press("Escape")

        await browser.run(unread)

        def seenAndOnline():
            from playwright.sync_api import expect

            alice, bob = pages["alice"], pages["bob"]
            openChat(alice, "bob")
            waitForText(alice, "Hello?")
            expect(alice.locator('.contact[data-name="bob"] .unread')).to_have_count(0)
            # Bob's page is polling the conversation: he is online.
            expect(alice.locator('#presence[data-online="true"]')).to_have_text(
                "Online", timeout=WAIT)
            bob.locator("#message-list .msg-row", has_text="Hello?").locator(".seen").wait_for(
                timeout=WAIT)
            alice.get_by_label("Message to bob").fill("Yes, sorry")
            alice.get_by_label("Message to bob").press("Enter")
            waitForText(bob, "Yes, sorry")
            expect(alice.locator("#message-list .msg-row", has_text="Yes, sorry")
                   .locator(".seen")).to_have_text("Seen", timeout=WAIT)
            expect(bob.locator('#presence[data-online="true"]')).to_have_text(
                "Online", timeout=WAIT)
            browser.shot(alice, "02-desktop-online-and-seen")
            browser.shot(bob, "03-narrow-online-and-seen")

        await browser.run(seenAndOnline)

        def block():
            from playwright.sync_api import expect

            alice, bob = pages["alice"], pages["bob"]
            alice.get_by_role("button", name="Block bob").click()
            expect(alice.get_by_role("button", name="Unblock bob")).to_be_visible(timeout=WAIT)
            expect(alice.locator("#blocked-note")).to_contain_text("You blocked bob")
            expect(alice.get_by_label("Message to bob")).to_be_disabled()
            expect(alice.locator("#send")).to_be_disabled()
            browser.shot(alice, "04-desktop-blocked")
            reply = bob.get_by_label("Message to alice")
            reply.fill("Why?")
            reply.press("Enter")
            refused = bob.locator("#message-list .msg.failed", has_text="Why?")
            expect(refused).to_contain_text("Not sent: this conversation is blocked",
                                            timeout=WAIT)
            browser.shot(bob, "05-narrow-send-refused")
            expect(bubbles(alice, "Why?")).to_have_count(0)

            alice.get_by_role("button", name="Unblock bob").click()
            expect(alice.get_by_role("button", name="Block bob")).to_be_visible(timeout=WAIT)
            expect(alice.locator("#blocked-note")).to_be_hidden()
            expect(alice.get_by_label("Message to bob")).to_be_enabled()
            # The unblock is effective cluster-wide within a second; the refused one is sent
            # again (until the node that serves the conversation has heard of it).
            retryUntilSent(bob, "Why?")
            waitForText(alice, "Why?")
            alice.get_by_label("Message to bob").fill("Unblocked")
            alice.get_by_label("Message to bob").press("Enter")
            retryUntilSent(alice, "Unblocked")
            waitForText(bob, "Unblocked")
            for page in (alice, bob):
                expect(page.locator("body")).not_to_contain_text(internalDetails(cluster))
            browser.shot(alice, "06-desktop-unblocked")
            browser.shot(bob, "07-narrow-unblocked")

        await browser.run(block)
        self.assertEqual(browser.errors, [])
        print(f"\nscreenshots: {browser.screenshots}")

    @asyncTest
    async def test_devLoginOffOffersATokenField(self):
        """
        Where dev login is off, the sign-in form names the setting that enables it and takes
        a pasted token instead.
        """
        origin = serveStatic(self)
        cluster = await Cluster(self, size=1, sections={
            "http": {"cors_origins": origin},
        }).start()
        node = cluster.nodes[0]
        browser = await Browser(self, os.path.abspath(self.mktemp())).start()

        def signInWithToken():
            from playwright.sync_api import expect

            page = browser.newPage("carol", **NARROW)
            page.goto(f"{origin}/?api={node.url}")
            page.get_by_label("User name").fill("carol")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#signin-error")).to_contain_text("[auth] dev_login = true")
            field = page.get_by_label("Or paste an access token")
            expect(field).to_be_visible()
            browser.shot(page, "01-narrow-dev-login-off")
            field.fill("not a token")
            page.get_by_role("button", name="Use this token").click()
            expect(page.locator("#token-error")).to_contain_text("not a valid")
            field.fill(token("carol"))
            page.get_by_role("button", name="Use this token").click()
            page.locator("#app").wait_for(state="visible")
            expect(page.locator("#me-name")).to_have_text("carol")
            page.locator('#conn[data-state="live"]').wait_for(timeout=WAIT)

        await browser.run(signInWithToken)
        self.assertEqual(browser.errors, [])


class TransportTests(unittest.TestCase):
    """
    The chat page follows a conversation over EventSource where the browser has it, and over
    long-polls where it does not; against one real node that serves the page itself.
    """

    timeout = 120

    def setUp(self):
        requireBrowser()

    async def chat(self, withEventSource: bool) -> list[str]:
        from tests.support.node import Node

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "n1", sections={"auth": {"dev_login": "true"}})
        self.addCleanup(node.stop)
        await node.start()
        browser = await Browser(self, os.path.abspath(self.mktemp())).start()

        def chat():
            alice = browser.newPage("alice", **DESKTOP)
            bob = browser.newPage("bob", **PHONE)
            if not withEventSource:
                bob.add_init_script("delete window.EventSource;")
            signIn(alice, node.url, node.url, "alice")
            signIn(bob, node.url, node.url, "bob")
            self.assertEqual(bob.evaluate("typeof EventSource"),
                             "function" if withEventSource else "undefined")
            openChat(alice, "bob")
            openChat(bob, "alice")
            bob.locator('#conn[data-state="live"]').wait_for(timeout=WAIT)
            # Bob's page is following the conversation (a poll or a stream) before alice writes.
            bob.wait_for_timeout(1000)
            marked = len(browser.log)
            for i in range(3):
                alice.get_by_label("Message to bob").fill(f"Live message {i}")
                alice.get_by_label("Message to bob").press("Enter")
                waitForText(bob, f"Live message {i}")
            bob.get_by_label("Message to alice").fill("Seen them all")
            bob.get_by_label("Message to alice").press("Enter")
            waitForText(alice, "Seen them all")
            return list(browser.log), marked

        log, marked = await browser.run(chat)
        self.assertEqual(browser.errors, [])
        return log, marked

    @staticmethod
    def lines(log: list[str], who: str, tail: str) -> list[str]:
        return [line for line in log if line.split()[1:2] == [who] and " 200 GET " in line
                and "/conversations/dm:alice:bob/" + tail in line]

    @asyncTest
    async def test_eventSource(self):
        """
        Bob's page gets alice's messages over one open stream: the stream was answered, and
        no long-poll of the conversation was made while the messages arrived.
        """
        log, marked = await self.chat(withEventSource=True)
        self.assertTrue(self.lines(log[:marked], "bob", "stream"), "bob's page opened no stream")
        self.assertEqual(self.lines(log[marked:], "bob", "events"), [],
                         "bob's page long-polled while the stream was open")
        self.assertTrue([line for line in log if line.split()[1:2] == ["bob"]
                         and " 200 GET " in line and "/v1/inbox/stream" in line])

    @asyncTest
    async def test_withoutEventSource(self):
        """
        Without EventSource (deleted before the page's scripts run), bob's page long-polls and
        opens no stream.
        """
        log, marked = await self.chat(withEventSource=False)
        self.assertEqual([line for line in log if line.split()[1:2] == ["bob"]
                          and "/stream" in line], [])
        self.assertTrue(self.lines(log[marked:], "bob", "events"),
                        "bob's page did not long-poll")
