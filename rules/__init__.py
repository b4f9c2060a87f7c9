"""The built-in rules, one module each, listed in code order.

This tuple is what the ``builtin`` entry point of the ``initlint.rules`` group names: built-in rules are
registered exactly as third-party ones are.
"""

from .cloned_layer_init import cloned_layer_init
from .concat_scale_mismatch import concat_scale_mismatch
from .depthwise_fan import depthwise_fan
from .fp16_range import fp16_range
from .hot_classifier_head import hot_classifier_head
from .non_inverted_dropout import non_inverted_dropout
from .off_scale_weights import off_scale_weights
from .post_ln import post_ln
from .recurrent_radius import recurrent_radius
from .saturated_activation import saturated_activation
from .signal_drift import signal_drift
from .symmetric_init import symmetric_init
from .transposed_conv_checkerboard import transposed_conv_checkerboard
from .unscaled_attention_logits import unscaled_attention_logits
from .unscaled_branch_sum import unscaled_branch_sum
from .unscaled_residual import unscaled_residual

BUILTIN_RULES: tuple = (
    off_scale_weights,
    depthwise_fan,
    transposed_conv_checkerboard,
    hot_classifier_head,
    recurrent_radius,
    symmetric_init,
    cloned_layer_init,
    unscaled_residual,
    unscaled_branch_sum,
    concat_scale_mismatch,
    post_ln,
    unscaled_attention_logits,
    non_inverted_dropout,
    fp16_range,
    saturated_activation,
    signal_drift,
)
