"""Pure schedule data: parsing, validation, resolution against parameter names and implicit generation."""

from fts_dist.schedule.blocks import BlockLayout, find_blocks, generate_block_schedule
from fts_dist.schedule.implicit import generate_implicit_schedule
from fts_dist.schedule.io import dump_schedule, load_schedule_file, schedule_file_name
from fts_dist.schedule.model import Phase, Schedule
from fts_dist.schedule.pipeline import ScheduleSource, load_schedule, write_schedule_file
from fts_dist.schedule.resolve import ResolvedSchedule, resolve_schedule

__all__ = [
    "BlockLayout",
    "Phase",
    "ResolvedSchedule",
    "Schedule",
    "ScheduleSource",
    "dump_schedule",
    "find_blocks",
    "generate_block_schedule",
    "generate_implicit_schedule",
    "load_schedule",
    "load_schedule_file",
    "resolve_schedule",
    "schedule_file_name",
    "write_schedule_file",
]
