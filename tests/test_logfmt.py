"""One logfmt for the hub, the agent and the runtimes: the same line for the same fields."""

from specs.logfmt import kv, logfmt


def test_plain_values_are_written_bare_and_in_order():
    assert kv("started", node="0xab", n=3) == "event=started node=0xab n=3"


def test_none_values_are_left_out():
    assert kv("stopped", reason=None, n=0) == "event=stopped n=0"


def test_values_with_spaces_quotes_equals_or_nothing_are_json_strings():
    line = logfmt(msg='a "b" c', eq="k=v", empty="", nl="x\ny")
    assert line == 'msg="a \\"b\\" c" eq="k=v" empty="" nl="x\\ny"'
    assert "\n" not in line
