"""Is an acquisition physically plausible for its sensor: the right units, known classes, a date in its mission?

The raw gate's range check accepts any value inside the sensor's physical range, so data in the wrong
units slips through it: S2 in percent (0-100) lies inside reflectance x 10000, S1 in linear power (0-1)
inside the dB range, land cover coded 1-99 inside WorldCover's 0-100. These checks look at the item as a
whole (all its band assets), where real data leaves no doubt: any real S2 scene has some band above 1%
reflectance (100), any real S1 scene has negative dB values. `tests/test_hostile_env.py` runs them on the
real BigEarthNet and SEN12MS-CR samples in tests/data.
"""

from __future__ import annotations

import datetime as dt

from msgfm.landcover import LEGEND
from msgfm.sensors import SENSORS

S2_PERCENT_MAX = 100.0
"""An S2 item whose every band value is at most this is in percent, not reflectance x 10000."""


def implausible_values(sensor: str, value_min: float | None, value_max: float | None, foreign_codes: str) -> str:
    """Why an item's values do not look like its sensor's units ("" when they do or there are none)."""
    if sensor == "landcover" and foreign_codes:
        codes = ", ".join(str(c.code) for c in LEGEND)
        return f"land cover codes {foreign_codes} are not ESA WorldCover classes ({codes}): another legend?"
    if value_min is None or value_max is None:
        return ""
    if sensor == "s2" and value_max <= S2_PERCENT_MAX:
        return f"S2 values look like percent (max {value_max:g}): expected reflectance x 10000"
    if sensor == "s1" and value_min >= 0:
        return f"S1 values look like linear power (min {value_min:g}, max {value_max:g}): expected backscatter in dB"
    return ""


def implausible_date(sensor: str, when: dt.datetime, now: dt.datetime | None = None) -> str:
    """Why an acquisition time is impossible for `sensor`: before its mission started, or in the future."""
    now = now or dt.datetime.now(dt.UTC)
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    spec = SENSORS.get(sensor)
    start = spec.mission_start if spec else None
    if start is not None and when.date() < start:
        return f"datetime {when.isoformat()} is before {spec.title.split(' (')[0]} began ({start.isoformat()})"
    if when > now + dt.timedelta(days=1):
        return f"datetime {when.isoformat()} is in the future"
    return ""
