"""The built-in rules, one module each, listed in code order.

This tuple is what the ``builtin`` entry point of the ``initlint.rules`` group names: built-in rules are
registered exactly as third-party ones are.
"""

from .depthwise_fan import depthwise_fan
from .post_ln import post_ln

BUILTIN_RULES: tuple = (
    depthwise_fan,
    post_ln,
)
