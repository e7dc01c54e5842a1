"""Protocol-faithful fakes of UAA, the Cloud Controller and the BOSH Director: real HTTP(S)
servers on loopback, e.g. ``with FakeUAA() as uaa, FakeCloudController(uaa) as cc: ...``.

``tests/`` is a package (pytest puts the checkout on ``sys.path``), so tests anywhere under it
import ``from tests.fakes.uaa import FakeUAA``. Model classes (``Instance`` of CC and of the
Director share a name) are imported from their modules.
"""

from .cloud_controller import FakeCloudController
from .director import FakeDirector
from .http import FakeServer, RequestRecord, Response
from .uaa import ALICE, BOB, CAROL, FakeUAA, User, make_user

__all__ = ["ALICE", "BOB", "CAROL", "FakeCloudController", "FakeDirector", "FakeServer",
           "FakeUAA", "RequestRecord", "Response", "User", "make_user"]
