"""The comparison of a notebook's printed text with its recording (tests/printed.py) can fail."""

from tests.printed import TIMING, differences

RECORDED = ["validation loss 5.7067 after 150 steps; 78.0% in the requested form\nlargest difference 8.9e-08\n"]


def test_on_the_recording_machine_any_change_is_a_difference():
    assert differences(RECORDED, RECORDED, exact=True) == []
    assert differences(RECORDED, [RECORDED[0].replace("5.7067", "5.7068")], exact=True)


def test_on_another_machine_numbers_may_move_within_tolerance():
    moved = RECORDED[0].replace("5.7067", "5.7152").replace("78.0%", "77.0%").replace("8.9e-08", "1.3e-07")
    assert differences(RECORDED, [moved], exact=False) == []


def test_on_another_machine_a_number_out_of_tolerance_or_a_changed_word_is_a_difference():
    assert differences(RECORDED, [RECORDED[0].replace("5.7067", "6.1")], exact=False)
    assert differences(RECORDED, [RECORDED[0].replace("78.0%", "70.0%")], exact=False)
    assert differences(RECORDED, [RECORDED[0].replace("8.9e-08", "0.002")], exact=False)
    assert differences(RECORDED, [RECORDED[0].replace("requested", "wrong")], exact=False)
    assert differences(RECORDED, [RECORDED[0] + "one more line 1\n"], exact=False)
    assert differences(RECORDED, RECORDED + [""], exact=False)


def test_timings_are_masked_and_nothing_else():
    assert TIMING.sub("<t>", "150 steps in 12.5 s; 3.1 ms per token; 2.4x faster") == "150 steps in <t>; <t> per token; <t>"
    assert TIMING.sub("<t>", "4x less memory, 3 steps, loss 2.5") == "4x less memory, 3 steps, loss 2.5"


def test_a_machine_dependent_cell_needs_only_as_many_lines_on_another_machine():
    other = [RECORDED[0].replace("5.7067", "9.9").replace("requested", "other")]
    assert differences(RECORDED, other, exact=False, machine_dependent={0}) == []
    assert differences(RECORDED, other, exact=False)  # unmarked, the same text is a difference
    assert differences(RECORDED, other, exact=True, machine_dependent={0})  # on the recording machine: exact
    assert differences(RECORDED, [other[0] + "one more line\n"], exact=False, machine_dependent={0})
