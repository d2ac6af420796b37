"""
Tests for L{hpchat.web.auth}: HS256 bearer tokens checked against the injected clock.
"""

from __future__ import annotations

import jwt
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hpchat.web import auth
from hpchat.web.auth import Authenticator, Unauthorized
from tests.web.fakes import NOW, SECRET


class AuthenticatorTests(SynchronousTestCase):
    """
    L{Authenticator.mint} and L{Authenticator.userFor}.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.auth = Authenticator(SECRET, self.clock)

    def encode(self, claims: dict, key=SECRET, algorithm: str = "HS256") -> str:
        return jwt.encode(claims, key, algorithm=algorithm)

    def assertRefused(self, token, why: str | None = None) -> Unauthorized:
        error = self.assertRaises(Unauthorized, self.auth.userFor, token)
        if why is not None:
            self.assertIn(why, str(error))
        if token:
            self.assertNotIn(token, str(error))
        return error

    def test_roundTrip(self):
        """A minted token names its user."""
        self.assertEqual(self.auth.userFor(self.auth.mint("alice", 60)), "alice")

    def test_claims(self):
        """Tokens are HS256 JWTs with sub, iat and exp = now + ttl."""
        token = self.auth.mint("bob_2-X", 3600)
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"],
                            options={"verify_exp": False, "verify_iat": False})
        self.assertEqual(claims, {"sub": "bob_2-X", "iat": int(NOW), "exp": int(NOW) + 3600})

    def test_sharedSecret(self):
        """A token minted by another node with the same secret is accepted."""
        other = Authenticator(SECRET, self.clock)
        self.assertEqual(self.auth.userFor(other.mint("carol", 60)), "carol")

    def test_externalToken(self):
        """A token made by another HS256 implementation with the secret is accepted."""
        token = self.encode({"sub": "dave", "exp": NOW + 10})
        self.assertEqual(self.auth.userFor(token), "dave")

    def test_mintInvalidUser(self):
        """mint refuses user ids outside ^[A-Za-z0-9_-]{1,64}$."""
        for user in ["", "al ice", "a" * 65, "alice!", "b\u00f6b", None]:
            self.assertRaises(ValueError, self.auth.mint, user, 60)

    def test_mintTrailingNewline(self):
        """mint refuses a user id with a trailing newline."""
        self.assertRaises(ValueError, self.auth.mint, "alice\n", 60)

    def test_mintOnLaterClock(self):
        """A token minted on the injected clock is valid on that clock, whatever the wall time."""
        self.clock.advance(4_000_000_000 - NOW)
        token = self.auth.mint("alice", 60)
        self.assertEqual(self.auth.userFor(token), "alice")

    def test_expired(self):
        """A token is refused from its exp on, on the injected clock."""
        token = self.auth.mint("alice", 60)
        self.clock.advance(59)
        self.assertEqual(Authenticator(SECRET, self.clock).userFor(token), "alice")
        self.clock.advance(1)
        self.assertRefused(token, "expired")

    def test_expiredOnArrival(self):
        """A token whose exp has passed is refused at first sight."""
        self.assertRefused(self.encode({"sub": "alice", "exp": NOW - 1}), "expired")

    def test_fractionalExp(self):
        """A fractional exp is honoured to the fraction."""
        token = self.encode({"sub": "alice", "exp": NOW + 0.5})
        self.assertEqual(self.auth.userFor(token), "alice")
        self.clock.advance(0.5)
        self.assertRefused(token, "expired")

    def test_cachedTokenExpires(self):
        """A token verified (and cached) before still expires on time."""
        token = self.auth.mint("alice", 10)
        self.assertEqual(self.auth.userFor(token), "alice")
        self.clock.advance(9.5)
        self.assertEqual(self.auth.userFor(token), "alice")
        self.clock.advance(0.5)
        self.assertRefused(token, "expired")
        self.assertRefused(token, "expired")

    def test_cacheAvoidsDecoding(self):
        """A token already verified is not decoded again."""
        token = self.auth.mint("alice", 60)
        calls = []
        real = jwt.decode

        def counting(*args, **kwargs):
            calls.append(args[0])
            return real(*args, **kwargs)

        self.patch(auth.jwt, "decode", counting)
        for _ in range(3):
            self.assertEqual(self.auth.userFor(token), "alice")
        self.assertEqual(len(calls), 1)

    def test_cacheBounded(self):
        """The cache keeps at most cacheSize tokens, dropping the oldest first."""
        self.auth.cacheSize = 2
        tokens = [self.auth.mint(user, 60) for user in ["a1", "a2", "a3"]]
        for token in tokens:
            self.auth.userFor(token)
        calls = []
        real = jwt.decode
        self.patch(auth.jwt, "decode", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        self.assertEqual(self.auth.userFor(tokens[2]), "a3")
        self.assertEqual(calls, [])
        self.assertEqual(self.auth.userFor(tokens[0]), "a1")
        self.assertEqual(calls, [1])

    def test_forgedSignature(self):
        """A token signed with another secret is refused."""
        self.assertRefused(self.encode({"sub": "alice", "exp": NOW + 60}, key=b"k" * 40))

    def test_tamperedPayload(self):
        """Changing the claims of a signed token breaks it."""
        header, _, signature = self.auth.mint("alice", 60).split(".")
        other = self.encode({"sub": "mallory", "iat": int(NOW), "exp": int(NOW) + 60},
                            key=b"k" * 40).split(".")[1]
        self.assertRefused(f"{header}.{other}.{signature}")

    def test_noneAlgorithm(self):
        """An unsigned (alg none) token is refused."""
        token = jwt.encode({"sub": "alice", "exp": NOW + 60}, None, algorithm="none")
        self.assertRefused(token)
        header, payload, _ = self.auth.mint("alice", 60).split(".")
        noneHeader = token.split(".")[0]
        self.assertRefused(f"{noneHeader}.{payload}.")

    def test_otherAlgorithm(self):
        """An HS512 token, even with the right secret, is refused."""
        self.assertRefused(self.encode({"sub": "alice", "exp": NOW + 60}, algorithm="HS512"))
        self.assertRefused(self.encode({"sub": "alice", "exp": NOW + 60}, algorithm="HS384"))

    def test_missingSub(self):
        """A token without sub is refused."""
        self.assertRefused(self.encode({"exp": NOW + 60}))

    def test_missingExp(self):
        """A token without exp is refused."""
        self.assertRefused(self.encode({"sub": "alice"}))

    def test_nullClaims(self):
        """null sub or exp count as missing."""
        self.assertRefused(self.encode({"sub": None, "exp": NOW + 60}))
        self.assertRefused(self.encode({"sub": "alice", "exp": None}))

    def test_badExp(self):
        """An exp that is not a number is refused."""
        for exp in ["tomorrow", True, [NOW + 60], {"t": 1}]:
            self.assertRefused(self.encode({"sub": "alice", "exp": exp}))

    def test_nonFiniteExp(self):
        """
        An exp or nbf of NaN, Infinity or -Infinity (which PyJWT's JSON decoder accepts) is
        refused: such a token would never expire.
        """
        for value in [float("nan"), float("inf"), float("-inf")]:
            self.assertRefused(self.encode({"sub": "alice", "exp": value}), "finite")
            self.assertRefused(self.encode({"sub": "alice", "exp": NOW + 60, "nbf": value}),
                               "finite")

    def test_invalidSub(self):
        """A sub that is not a valid user id is refused."""
        for sub in ["", "al ice", "a" * 65, 42, ["alice"], "caf\u00e9", "a/b"]:
            self.assertRefused(self.encode({"sub": sub, "exp": NOW + 60}))

    def test_subTrailingNewline(self):
        """A sub with a trailing newline is not a valid user id."""
        self.assertRefused(self.encode({"sub": "alice\n", "exp": NOW + 60}))

    def test_longestSub(self):
        """A 64-character sub is valid."""
        self.assertEqual(self.auth.userFor(self.encode({"sub": "z" * 64, "exp": NOW + 60})),
                         "z" * 64)

    def test_noToken(self):
        """No token, or an empty one, is refused."""
        self.assertRefused(None, "required")
        self.assertRefused("", "required")

    def test_garbage(self):
        """Strings that are not JWTs are refused."""
        for token in ["abc", "a.b.c", "....", "\u00e9t\u00e9.x.y"]:
            self.assertRefused(token)

    def test_refusedNotCached(self):
        """A refused token stays refused, and is not cached."""
        token = self.encode({"sub": "alice", "exp": NOW + 60}, key=b"k" * 40)
        self.assertRefused(token)
        self.assertRefused(token)
        self.assertNotIn(token, self.auth._cache)
