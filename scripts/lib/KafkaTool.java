import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * What scripts/bench and scripts/drill ask of Kafka, with the broker's own kafka-clients
 * (run with the broker's class path: java -cp "$KAFKA_LIBS/*" KafkaTool.java ...):
 *
 *   lag BOOTSTRAP GROUP TOPIC   records of TOPIC that GROUP has not committed
 *   count BOOTSTRAP TOPIC       records ever written to TOPIC (sum of end offsets; 0 if none)
 *   assigned BOOTSTRAP GROUP    members of GROUP holding a partition, once the group is stable
 *                               (0 while it rebalances)
 *   produce BOOTSTRAP TOPIC     one record per stdin line: KEY TAB VALUE [TAB HEADER=VALUE]...
 *                               sent as given (no schema, no checks), acknowledged by the broker
 */
public class KafkaTool {
  public static void main(String[] args) throws Exception {
    switch (args[0]) {
      case "lag" -> System.out.println(lag(args[1], args[2], args[3]));
      case "count" -> System.out.println(count(args[1], args[2]));
      case "assigned" -> System.out.println(assigned(args[1], args[2]));
      case "produce" -> produce(args[1], args[2]);
      default -> throw new IllegalArgumentException("unknown command " + args[0]);
    }
  }

  static Admin admin(String bootstrap) {
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    return Admin.create(props);
  }

  static Map<TopicPartition, Long> endOffsets(Admin admin, String topic) throws Exception {
    TopicDescription description = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
    Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
    description.partitions().forEach(p -> latest.put(new TopicPartition(topic, p.partition()), OffsetSpec.latest()));
    Map<TopicPartition, Long> ends = new HashMap<>();
    admin.listOffsets(latest).all().get().forEach((tp, info) -> ends.put(tp, info.offset()));
    return ends;
  }

  static long lag(String bootstrap, String group, String topic) throws Exception {
    try (Admin admin = admin(bootstrap)) {
      Map<TopicPartition, OffsetAndMetadata> committed =
          admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
      long lag = 0;
      for (var end : endOffsets(admin, topic).entrySet()) {
        OffsetAndMetadata done = committed.get(end.getKey());
        // No commit yet: the group starts from the earliest offset (auto.offset.reset).
        lag += Math.max(0, end.getValue() - (done == null ? 0 : done.offset()));
      }
      return lag;
    }
  }

  static long assigned(String bootstrap, String group) throws Exception {
    try (Admin admin = admin(bootstrap)) {
      var described = admin.describeConsumerGroups(List.of(group)).describedGroups().get(group).get();
      if (described.groupState() != org.apache.kafka.common.GroupState.STABLE) {
        return 0;
      }
      return described.members().stream()
          .filter(member -> !member.assignment().topicPartitions().isEmpty())
          .count();
    }
  }

  static long count(String bootstrap, String topic) throws Exception {
    try (Admin admin = admin(bootstrap)) {
      return endOffsets(admin, topic).values().stream().mapToLong(Long::longValue).sum();
    } catch (java.util.concurrent.ExecutionException e) {
      if (e.getCause() instanceof UnknownTopicOrPartitionException) {
        return 0; // never written to: the topic was never created
      }
      throw e;
    }
  }

  static void produce(String bootstrap, String topic) throws Exception {
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    try (var producer = new KafkaProducer<byte[], byte[]>(props, new ByteArraySerializer(), new ByteArraySerializer());
        var in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
      String line;
      while ((line = in.readLine()) != null) {
        if (line.isBlank()) continue;
        String[] fields = line.split("\t");
        var record = new ProducerRecord<>(topic, fields[0].getBytes(StandardCharsets.UTF_8),
            fields[1].getBytes(StandardCharsets.UTF_8));
        for (int i = 2; i < fields.length; i++) {
          int eq = fields[i].indexOf('=');
          record.headers().add(fields[i].substring(0, eq), fields[i].substring(eq + 1).getBytes(StandardCharsets.UTF_8));
        }
        var meta = producer.send(record).get();
        System.out.println(meta.topic() + "-" + meta.partition() + "@" + meta.offset());
      }
    }
  }
}
